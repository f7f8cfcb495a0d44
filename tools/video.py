"""Per-frame pieces of ``predict.py`` on videos and webcams: face tracks, temporal smoothing, outputs.

* :class:`Tracker` keeps face tracks across frames: detections (every ``detect_every`` frames) are matched
  to the open tracks by box overlap (IoU, greedy, highest first); an unmatched detection opens a track;
  a track unmatched at ``max_missed`` detection rounds in a row is closed. Between detections every
  track keeps its last box and landmarks (faces move little in a fraction of a second).
* Each track's class probabilities are smoothed over time with an exponential moving average,
  ``p̄_t = α·p_t + (1 − α)·p̄_{t−1}`` (``alpha`` = 1: no smoothing), as is its valence–arousal when the
  model predicts it.
* :class:`VideoOutputs` writes the annotated video (boxes, smoothed label), the per-frame CSV
  (frame, time, track, box, every class probability raw and smoothed, VA) and, at the end, a timeline
  plot of each track's smoothed probabilities (and VA).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def box_iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    track_id: int
    box: tuple  # (x, y, w, h) in frame pixels
    keypoints: object = None  # the detector's 5 points (None: centre-crop fallback)
    confidence: float | None = None
    missed: int = 0  # detection rounds in a row without a matching detection
    smoothed: np.ndarray | None = None  # (C,) smoothed probabilities
    smoothed_va: np.ndarray | None = None  # (2,)
    history: list = field(default_factory=list)  # (frame, smoothed probabilities, smoothed VA or None)


class Tracker:
    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 2, alpha: float = 0.3):
        self.iou_threshold, self.max_missed, self.alpha = iou_threshold, max_missed, alpha
        self.tracks: list[Track] = []
        self.closed: list[Track] = []
        self._next_id = 1

    def update(self, detections: list[dict]) -> list[Track]:
        """Match one detection round (dicts with ``box``, ``keypoints``, ``confidence``); the open tracks."""
        pairs = sorted(((box_iou(t.box, d["box"]), ti, di) for ti, t in enumerate(self.tracks)
                        for di, d in enumerate(detections)), reverse=True)
        used_t, used_d = set(), set()
        for iou, ti, di in pairs:
            if iou < self.iou_threshold or ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            track, det = self.tracks[ti], detections[di]
            track.box, track.keypoints, track.confidence, track.missed = (
                tuple(det["box"]), det.get("keypoints"), det.get("confidence"), 0)
        for ti, track in enumerate(self.tracks):
            if ti not in used_t:
                track.missed += 1
        for di, det in enumerate(detections):
            if di not in used_d:
                self.tracks.append(Track(self._next_id, tuple(det["box"]), det.get("keypoints"), det.get("confidence")))
                self._next_id += 1
        self.closed += [t for t in self.tracks if t.missed > self.max_missed]
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return self.tracks

    def smooth(self, track: Track, frame: int, probabilities, va=None) -> None:
        """Fold this frame's prediction into the track's moving averages (and its history)."""
        p = np.asarray(probabilities, np.float64)
        track.smoothed = p if track.smoothed is None else self.alpha * p + (1 - self.alpha) * track.smoothed
        if va is not None:
            v = np.asarray(va, np.float64)
            track.smoothed_va = v if track.smoothed_va is None else self.alpha * v + (1 - self.alpha) * track.smoothed_va
        track.history.append((frame, track.smoothed.copy(), None if va is None else track.smoothed_va.copy()))

    def all_tracks(self) -> list[Track]:
        return [*self.closed, *self.tracks]


class VideoOutputs:
    """The annotated video, the per-frame CSV and the timeline plot of one video (or camera session)."""

    def __init__(self, stem: Path, fps: float, frame_size: tuple[int, int], class_names, has_va: bool):
        import cv2

        self.stem, self.fps, self.class_names, self.has_va = Path(stem), float(fps or 25.0), list(class_names), has_va
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.video_path = self.stem.with_name(self.stem.name + "_annotated.mp4")
        self.csv_path = self.stem.with_name(self.stem.name + "_frames.csv")
        self.plot_path = self.stem.with_name(self.stem.name + "_timeline.png")
        # Written under temporary names (the writer's pid in them, as common.io's temporaries) and renamed
        # into place by close(): an interrupted run never leaves a half-written file under the final name.
        self._partial = {path: path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
                         for path in (self.video_path, self.csv_path)}
        width, height = frame_size
        self._writer = cv2.VideoWriter(str(self._partial[self.video_path]), cv2.VideoWriter_fourcc(*"mp4v"),
                                       self.fps, (width, height))
        if not self._writer.isOpened():
            from common.errors import WriteError

            raise WriteError(f"{self.video_path}: OpenCV cannot write an mp4v video here")
        self._csv_handle = open(self._partial[self.csv_path], "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._csv_handle)
        header = ["frame", "time_s", "track", "x", "y", "w", "h", "detector_confidence", "label", "label_smoothed"]
        header += [f"p_{n}" for n in self.class_names] + [f"p_smoothed_{n}" for n in self.class_names]
        if has_va:
            header += ["valence", "arousal", "valence_smoothed", "arousal_smoothed"]
        self._csv.writerow(header)
        self.frames = 0

    def write_frame(self, frame_rgb: np.ndarray, frame_index: int, faces: list[tuple]) -> None:
        """``faces``: (track, probabilities, va or None) of this frame; draws and logs them."""
        import cv2

        image = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
        for track, probs, va in faces:
            x, y, w, h = (int(round(v)) for v in track.box)
            best = int(np.argmax(track.smoothed))
            cv2.rectangle(image, (x, y), (x + w, y + h), (0, 159, 230), 2)
            text = f"{track.track_id}: {self.class_names[best]} {100 * track.smoothed[best]:.0f}%"
            cv2.putText(image, text, (x, max(12, y - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 159, 230), 1, cv2.LINE_AA)
            row = [frame_index, round(frame_index / self.fps, 4), track.track_id, x, y, w, h,
                   "" if track.confidence is None else round(float(track.confidence), 4),
                   self.class_names[int(np.argmax(probs))], self.class_names[best],
                   *[round(float(v), 6) for v in probs], *[round(float(v), 6) for v in track.smoothed]]
            if self.has_va:
                row += ([round(float(v), 6) for v in va] + [round(float(v), 6) for v in track.smoothed_va]
                        if va is not None else ["", "", "", ""])
            self._csv.writerow(row)
        self._writer.write(image)
        self.frames += 1

    def close(self, tracks: list[Track]) -> None:
        """Finish the video and CSV, move them into place, record them as this toolkit's, draw the timeline."""
        from common.io import record_own_files

        self._writer.release()
        self._csv_handle.close()
        for final, partial in self._partial.items():
            os.replace(partial, final)
        record_own_files(self._partial)
        timeline_figure(tracks, self.class_names, self.fps, self.has_va, self.plot_path)


def timeline_figure(tracks: list[Track], class_names, fps: float, has_va: bool, path) -> Path:
    """Smoothed class probabilities (and VA) of each track against time, one row per track."""
    from tools.figures import _plt, class_color, save_png

    plt = _plt()
    shown = [t for t in tracks if t.history] or []
    rows = max(len(shown), 1)
    cols = 2 if has_va else 1
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 2.4 * rows + 0.6), squeeze=False)
    for r, track in enumerate(shown):
        frames = np.array([f for f, _, _ in track.history]) / fps
        probs = np.stack([p for _, p, _ in track.history])
        ax = axes[r][0]
        for c, name in enumerate(class_names):
            ax.plot(frames, probs[:, c], color=class_color(c), label=name, lw=1.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {track.track_id}\nprobability", fontsize=8)
        ax.grid(alpha=0.3)
        if r == 0:
            ax.legend(fontsize=7, ncol=min(len(class_names), 4), loc="upper right")
        if has_va:
            ax = axes[r][1]
            vas = [v for _, _, v in track.history]
            known = [i for i, v in enumerate(vas) if v is not None]
            if known:
                va = np.stack([vas[i] for i in known])
                ax.plot(frames[known], va[:, 0], label="valence", color="#0072B2")
                ax.plot(frames[known], va[:, 1], label="arousal", color="#D55E00")
            ax.set_ylim(-1, 1)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.legend(fontsize=7, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    if not shown:
        axes[0][0].text(0.5, 0.5, "no face in any frame", ha="center", va="center")
    fig.suptitle(f"{Path(path).name}: smoothed predictions per face track", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
