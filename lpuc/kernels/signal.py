"""Signal processing: DFT, STFT, window functions and the mel filterbank matrix.

Complex tensors are real tensors with a trailing axis of 2 (real, imaginary); real signals may
also come with a trailing axis of 1. Transforms run in single precision (double for float64 inputs),
as numpy's FFT does for float32.
"""

from __future__ import annotations

import numpy as np

from lpuc.kernels._common import float_scalar, int_scalar, normalize_axis, onnx_dtype, opset_before
from lpuc.kernels.registry import KernelContext, kernel


def _to_complex(x: np.ndarray, op: str) -> np.ndarray:
    """(..., 1) real or (..., 2) complex as a complex array without the trailing axis."""
    parts = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    if x.shape[-1] == 1:
        return parts[..., 0] + 0j
    if x.shape[-1] == 2:
        return parts[..., 0] + 1j * parts[..., 1]
    raise ValueError(f"{op}: the last axis must be 1 (real) or 2 (complex), got {x.shape[-1]}")


def _from_complex(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([y.real, y.imag], axis=-1).astype(dtype)


@kernel("DFT")
def dft(
    ctx: KernelContext, x: np.ndarray, dft_length: np.ndarray | None = None, axis: np.ndarray | None = None
) -> np.ndarray:
    # Before opset 20 the axis was an attribute defaulting to 1; since then it is an input defaulting to -2.
    if opset_before(ctx, 20):
        axis_value = int(ctx.attr("axis", 1))
    else:
        axis_value = int_scalar(axis, -2)
    rank = x.ndim
    if not (-rank <= axis_value <= -2 or 0 <= axis_value <= rank - 2):
        raise ValueError(f"DFT: axis {axis_value} is out of range for a rank-{rank} input")
    signal = _to_complex(x, "DFT")
    axis_value = normalize_axis(axis_value, rank)
    inverse = bool(ctx.attr("inverse", 0))
    onesided = bool(ctx.attr("onesided", 0))
    length = int_scalar(dft_length)
    if onesided and inverse:
        # IRFFT: a one-sided spectrum in, a real signal out.
        if length is None:
            length = 2 * (signal.shape[axis_value] - 1)
        return np.fft.irfft(signal, n=length, axis=axis_value)[..., None].astype(x.dtype)
    transform = np.fft.ifft if inverse else np.fft.fft
    y = transform(signal, n=length, axis=axis_value)
    if onesided:
        y = np.take(y, np.arange(y.shape[axis_value] // 2 + 1), axis=axis_value)
    return _from_complex(y, x.dtype)


@kernel("STFT")
def stft(
    ctx: KernelContext,
    signal: np.ndarray,
    frame_step: np.ndarray,
    window: np.ndarray | None = None,
    frame_length: np.ndarray | None = None,
) -> np.ndarray:
    samples = _to_complex(signal, "STFT")  # (batch, signal_length)
    signal_length = samples.shape[1]
    length = int_scalar(frame_length, signal_length if window is None else window.shape[0])
    if window is not None and window.shape[0] != length:
        raise ValueError(f"STFT: window length {window.shape[0]} differs from frame_length {length}")
    step = int_scalar(frame_step)
    if step <= 0 or not 0 < length <= signal_length:
        raise ValueError(
            f"STFT: invalid frame_step {step} / frame_length {length} for {signal_length} samples"
        )
    onesided = bool(ctx.attr("onesided", 1))
    if onesided and signal.shape[-1] == 2:
        raise ValueError("STFT: onesided output needs a real signal")
    num_frames = (signal_length - length) // step + 1
    positions = np.arange(num_frames)[:, None] * step + np.arange(length)
    frames = samples[:, positions]  # (batch, frames, frame_length)
    if window is not None:
        frames = frames * window.astype(frames.real.dtype)
    spectrum = np.fft.fft(frames, axis=-1)
    if onesided:
        spectrum = spectrum[..., : length // 2 + 1]
    return _from_complex(spectrum, signal.dtype)


def _cosine_window(ctx: KernelContext, size: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """sum_k (-1)^k a_k cos(2 pi k n / N); N is size when periodic and size - 1 when symmetric."""
    length = int_scalar(size)
    periodic = bool(ctx.attr("periodic", 1))
    dtype = onnx_dtype(int(ctx.attr("output_datatype", 1)))
    period = length if periodic else max(length - 1, 1)
    phase = 2 * np.pi * np.arange(length) / period
    window = sum((-1) ** k * a * np.cos(k * phase) for k, a in enumerate(coefficients))
    return np.asarray(window, dtype=np.float64).astype(dtype)


@kernel("HannWindow")
def hann_window(ctx: KernelContext, size: np.ndarray) -> np.ndarray:
    return _cosine_window(ctx, size, (0.5, 0.5))


@kernel("HammingWindow")
def hamming_window(ctx: KernelContext, size: np.ndarray) -> np.ndarray:
    return _cosine_window(ctx, size, (25 / 46, 21 / 46))


@kernel("BlackmanWindow")
def blackman_window(ctx: KernelContext, size: np.ndarray) -> np.ndarray:
    return _cosine_window(ctx, size, (0.42, 0.5, 0.08))


def _hertz_to_mel(hertz: np.ndarray) -> np.ndarray:
    return 2595 * np.log10(1 + hertz / 700)


def _mel_to_hertz(mel: np.ndarray) -> np.ndarray:
    return 700 * (10 ** (mel / 2595) - 1)


@kernel("MelWeightMatrix")
def mel_weight_matrix(
    ctx: KernelContext,
    num_mel_bins: np.ndarray,
    dft_length: np.ndarray,
    sample_rate: np.ndarray,
    lower_edge_hertz: np.ndarray,
    upper_edge_hertz: np.ndarray,
) -> np.ndarray:
    """Triangular filters with peak 1, edges evenly spaced in mel and snapped to DFT bins."""
    mel_bins, length, rate = int_scalar(num_mel_bins), int_scalar(dft_length), int_scalar(sample_rate)
    low, high = (_hertz_to_mel(float_scalar(e)) for e in (lower_edge_hertz, upper_edge_hertz))
    edges_mel = low + np.arange(mel_bins + 2) * (high - low) / (mel_bins + 2)
    edges = np.floor((length + 1) * _mel_to_hertz(edges_mel) / rate).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    bins = np.arange(length // 2 + 1)[:, None]
    rising = np.where(center > left, (bins - left) / np.maximum(center - left, 1), 1.0)
    falling = (right - bins) / np.maximum(right - center, 1)
    weights = np.where(
        (bins >= left) & (bins <= center), rising, np.where((bins > center) & (bins < right), falling, 0)
    )
    dtype = onnx_dtype(int(ctx.attr("output_datatype", 1)))
    return weights.astype(dtype)
