#!/usr/bin/env bash
# One-shot topic creation for docker-compose.yml (runs in the apache/kafka image).
# Pipeline topics and job.status get $PARTITIONS partitions: a stage scales out
# (`docker compose up --scale chunker=N`) to at most that many consuming replicas.
# Dead-letter topics get one: they are read by hand (mxw dlq list / replay).
# The list must match mxw_shared.topics.all_topics_with_dlq() (tests/deploy checks it).
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-6}"
REPLICATION_FACTOR="${REPLICATION_FACTOR:-1}"
TOPICS=(audio.uploaded transcript.ready chunks.ready embeddings.ready job.status)
DLQ_TOPICS=(audio.uploaded.dlq transcript.ready.dlq chunks.ready.dlq embeddings.ready.dlq job.status.dlq)

create() {
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$1" --partitions "$2" --replication-factor "$REPLICATION_FACTOR" \
    --config min.insync.replicas=1
}
for topic in "${TOPICS[@]}"; do create "$topic" "$PARTITIONS"; done
for topic in "${DLQ_TOPICS[@]}"; do create "$topic" 1; done
/opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP" --list
