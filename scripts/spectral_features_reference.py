#!/usr/bin/env python3
"""Independent reference for MambaKit's spectral baseline features (SpectralFeatures, Baselines/Spectrogram.swift).

    python3 scripts/spectral_features_reference.py [--bands B] [--segments S] [--frame N] [--hop H] FILE.wav...

Reads 16-bit PCM WAV files with the standard library's `wave` (mono, at their own rate) and prints one JSON object:
{"FILE": [features...]}. The features, written from their definition with numpy's FFT: Hann-windowed frames of N
samples every H (the last frame zero-padded; a clip shorter than one frame is one frame), the power spectrum
through B triangular filters on HTK's mel scale from 0 Hz to Nyquist, log(energy + 1e-10), the clip's mean log energy
subtracted; per band, its mean over the clip is removed from S equal runs of frames (each averaged), followed by the
B band means and the B band standard deviations. Only numpy is needed (Debian's python3-numpy).
"""
import argparse
import json
import wave

import numpy as np


def read(path):
    with wave.open(path) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise SystemExit(f"{path}: expected 16-bit mono PCM")
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768
    return x, rate


def filters(rate, n, bands):
    mel = lambda f: 2595 * np.log10(1 + f / 700)
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    edges = hz(mel(rate / 2) * np.arange(bands + 2) / (bands + 1))
    fk = np.arange(n // 2 + 1) * rate / n
    w = np.zeros((bands, n // 2 + 1))
    for b in range(bands):
        lo, mid, hi = edges[b:b + 3]
        rise = (fk - lo) / (mid - lo)
        fall = (hi - fk) / (hi - mid)
        w[b] = np.where((fk > lo) & (fk < hi), np.where(fk <= mid, rise, fall), 0)
    return w


def features(x, rate, n, hop, bands, segments):
    frames = 1 if len(x) <= n else 1 + -(-(len(x) - n) // hop)
    padded = np.concatenate([x, np.zeros(frames * hop + n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    spec = np.abs(np.fft.rfft(np.stack([padded[i * hop:i * hop + n] * window for i in range(frames)]), axis=1)) ** 2
    logs = np.log(spec @ filters(rate, n, bands).T + 1e-10)
    logs -= logs.mean()
    mean, dev = logs.mean(0), logs.std(0)
    runs = []
    for s in range(segments):
        lo = s * frames // segments
        hi = max(lo + 1, (s + 1) * frames // segments)
        runs.append(logs[lo:hi].mean(0) - mean)
    return np.concatenate(runs + [mean, dev])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--frame", type=int, default=256)
    p.add_argument("--hop", type=int, default=128)
    p.add_argument("--bands", type=int, default=40)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("files", nargs="+")
    a = p.parse_args()
    out = {}
    for f in a.files:
        x, rate = read(f)
        out[f] = features(x, rate, a.frame, a.hop, a.bands, a.segments).tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
