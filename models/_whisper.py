"""The Whisper-feature pieces of every family here: 16 kHz, 128-bin log-mel features from a
`WhisperFeatureExtractor`, the window it cuts clips to, the audio-token count of encoders that pool
Whisper's frames 2x, and the processor call that pads the text and extracts the features.

A family module imports the members it shares from here (`from models._whisper import encode, ...`)
and writes its own only where its processor differs. Private (leading underscore): not a family.
"""

from __future__ import annotations

from typing import Any

SAMPLING_RATE = 16000  # every Whisper-style extractor here; a family's SAMPLING_RATE
# The tiny models' Whisper-style audio encoder (the keys of Qwen2-Audio's and the Omni thinkers'
# audio configs): 2 layers, 64 wide.
TINY_ENCODER = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128}


def feature_extractor(window_seconds: int) -> Any:
    """A WhisperFeatureExtractor with the real checkpoints' settings (16 kHz, 128 mel bins, hop 160,
    n_fft 400, an attention mask) and a `window_seconds` window, for tiny models."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        n_fft=400,
        chunk_length=window_seconds,
        padding_value=0.0,
        return_attention_mask=True,
    )


def max_audio_seconds(processor: Any) -> float:
    """The feature extractor's window (`n_samples`): longer clips are cut to it."""
    fe = processor.feature_extractor
    return fe.n_samples / fe.sampling_rate


def num_audio_tokens(processor: Any, n_samples: int) -> int:
    """Audio tokens of a clip for a Whisper-style encoder followed by 2x average pooling.

    Valid mel frames L = ceil(n / hop) capped at the extractor's window, then the encoder's conv
    (stride 2) and the pooling (stride 2): ((L - 1) // 2 + 1 - 2) // 2 + 1, i.e. 25 tokens per second.
    This is the expansion rule of Qwen2AudioProcessor, Qwen2_5OmniProcessor and
    AudioFlamingo3Processor (transformers 5.23).
    """
    fe = processor.feature_extractor
    frames = min(-(-int(n_samples) // fe.hop_length), fe.nb_max_frames)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def encode(
    processor: Any, texts: list[str], audios: list[Any] | None, *, padding_side: str
) -> dict[str, Any]:
    """Tokenize rendered texts (padded to the longest) and extract 16 kHz log-mel features; the
    processor expands each audio placeholder to one token per encoder output frame. Returns
    input_ids, attention_mask and, with audio, input_features (clips, 128, frames) and
    feature_attention_mask."""
    kwargs: dict[str, Any] = {
        "text": texts,
        "return_tensors": "pt",
        "padding": True,
        "padding_side": padding_side,
    }
    if audios:
        kwargs["audio"] = list(audios)
        kwargs["sampling_rate"] = SAMPLING_RATE
    return dict(processor(**kwargs))
