-- Version 7: the HNSW graph is built with ef_construction 128 (pgvector's default is 64).
-- Measured at 1M chunks (docs/benchmarks.md, "1 000 000 chunks"): a large owner's recall@10
-- went from 0.930 to 0.998 at the same search latency; the build took ~10-45 % longer.
-- The graph is rebuilt here, holding a write lock on chunk_embeddings meanwhile: seconds
-- for a new or small installation, ~9 minutes per million chunks on two cores. Search
-- keeps working from the old graph until the new one is in place.
ALTER INDEX chunk_embeddings_hnsw SET (m = 16, ef_construction = 128);
REINDEX INDEX chunk_embeddings_hnsw;
