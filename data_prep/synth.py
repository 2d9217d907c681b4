"""Built-in synthetic benchmark: MMAR-schema items with real 16 kHz audio, true by construction.

    python -m data_prep.synth --out data/synth --n 2000 --seed 0 [--tasks higher_tone,beep_count]

Writes `<out>/audio/<id>.wav` (16 kHz mono 16-bit PCM, 2-3.6 s) and `<out>/meta.jsonl` (the 15 MMAR
fields plus `group`; `audio_path` is relative to `<out>`). The same seed gives byte-identical files.

This is what the quickstart trains a tiny randomly initialised audio LLM on, so every design choice
serves learnability: clean stimuli with large margins, one or two fixed question templates per task,
the same option texts for every item of a task, and a short `thinking` made of two template
sentences that state coarse facts (never numbers that would have to be read off the audio).

No shortcuts: every property a question does not ask about is drawn the same way whatever the
answer. In particular the clip length comes from a fixed per-task range, the sounds start after
0.1-0.4 s and silence fills the rest (so five beeps do not make a longer clip than one), and levels are drawn
independently of the answer (tests/test_synth.py checks both per task on 2,000 items). What the
question asks about necessarily shows in the audio in more ways than one: more beeps also mean
more sounding time and energy.

Tasks (layer / sub-category / modality; option texts, the variant's extra options in brackets):
- higher_tone  Signal Layer / Audio Difference Analysis / sound: two pure tones, one low
  (200-400 Hz) and one high (800-1600 Hz), always at least an octave apart.
  "the first tone", "the second tone" ["the same pitch"].
- beep_count   Perception Layer / Counting and Statistics / sound: 1-5 beeps of 80-140 ms with
  200-350 ms of silence between them. 4 of "one".."five" (variant: 2 of them).
- louder       Signal Layer / Acoustic Quality Analysis / sound: the same tone twice, 14-24 dB apart.
  "the first sound", "the second sound" ["equally loud"].
- longer       Perception Layer / Temporal Analysis / sound: the same tone twice, one 2.5-3.5x longer.
  "the first sound", "the second sound" ["equally long"].
- pitch_sweep  Signal Layer / Audio Difference Analysis / sound: one exponential sweep spanning
  more than an octave up or down. "rising", "falling" ["steady"].
- noise_order  Perception Layer / Temporal Analysis / sound: a white-noise burst and a tone separated
  by silence. "before the tone", "after the tone" ["at the same time"].
- triad        Perception Layer / Music Theory / music: a sustained major or minor triad of sines on
  a root from the whole-tone scale C6..A#6 (so the third alone tells the quality).
  "major", "minor" ["diminished", "augmented"].

Each generated scene is one `group`. With probability `variant_rate` it is also asked a second
time (same audio, alternate wording, a different number of options), so a grouped split never
separates the two. Extra options in variants are false by construction.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from common.io import atomic_write_jsonl
from common.logging_utils import setup_logging

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
MIN_SECONDS = 1.0
MAX_SECONDS = 5.0
MIN_PAD_SECONDS = 0.1  # silence kept after the last sound of every clip
FADE_SECONDS = 0.01  # raised-cosine ramps: no clicks, so no broadband energy at tone edges
COUNT_WORDS = ("one", "two", "three", "four", "five")
ORDINALS = ("first", "second")
DEFAULT_VARIANT_RATE = 0.25


@dataclass(frozen=True)
class Question:
    """One fixed wording: `k` options drawn from `pool` (always including the answer), in pool order."""

    text: str
    pool: tuple[str, ...]
    k: int


@dataclass(frozen=True)
class TaskSpec:
    """Where a task sits in MMAR's taxonomy and how it is asked."""

    category: str
    sub_category: str
    modality: str
    primary: Question
    variant: Question


@dataclass
class Scene:
    """One generated stimulus and what is true about it."""

    audio: np.ndarray
    answer: str
    thinking: str
    cue: list[str]


# ---------------------------------------------------------------------------------------------
# Signal building blocks. Everything is float64 in [-1, 1] until the final 16-bit quantisation.


def _fade(x: np.ndarray) -> np.ndarray:
    n = min(int(FADE_SECONDS * SAMPLING_RATE), len(x) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
    x = x.copy()
    x[:n] *= ramp
    x[len(x) - n :] *= ramp[::-1]
    return x


def _n(seconds: float) -> int:
    return int(round(seconds * SAMPLING_RATE))


def _tone(freq: float, seconds: float, amp: float) -> np.ndarray:
    t = np.arange(_n(seconds)) / SAMPLING_RATE
    return _fade(amp * np.sin(2 * np.pi * freq * t))


def _chord(freqs: Sequence[float], seconds: float, amp: float) -> np.ndarray:
    return sum(_tone(f, seconds, amp) for f in freqs)


def _sweep(f_start: float, f_end: float, seconds: float, amp: float) -> np.ndarray:
    # Exponential sweep: equal time per octave, which is how pitch is heard (and how mel bins space).
    t = np.arange(_n(seconds)) / SAMPLING_RATE
    k = np.log(f_end / f_start)
    phase = 2 * np.pi * f_start * seconds / k * (np.exp(k * t / seconds) - 1.0)
    return _fade(amp * np.sin(phase))


def _noise(rng: np.random.Generator, seconds: float, std: float) -> np.ndarray:
    return _fade(np.clip(rng.normal(0.0, std, _n(seconds)), -0.95, 0.95))


def _sequence(events: Sequence[np.ndarray], gaps: Sequence[float]) -> np.ndarray:
    """Events separated by silent `gaps`: a scene's sounding content, without lead or tail silence."""
    parts = []
    for i, event in enumerate(events):
        if i:
            parts.append(np.zeros(_n(gaps[i - 1])))
        parts.append(event)
    return np.concatenate(parts)


def _place(rng: np.random.Generator, content: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """`content` after 0.1-0.4 s of silence, then silence up to a length drawn from `clip` (seconds).

    The length is drawn from the task's fixed range whatever the answer, so clip duration carries
    no information about it (a clip as long as its content would make five beeps twice as long as
    one). The onset stays near the start, so where a sound begins is easy to learn.
    """
    lead = _n(rng.uniform(0.1, 0.4))
    total = _n(rng.uniform(*clip))
    if lead + len(content) + _n(MIN_PAD_SECONDS) > total:  # a bug in the ranges of SCENES
        raise AssertionError(f"content of {len(content) / SAMPLING_RATE:.2f} s does not fit a {clip} s clip")
    audio = np.zeros(total)
    audio[lead : lead + len(content)] = content
    return audio


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# ---------------------------------------------------------------------------------------------
# Scenes, one function per task. Each decides the answer first, then renders audio that makes it
# true with a wide margin, then states the coarse facts behind it in two template sentences.


def _scene_higher_tone(rng: np.random.Generator, label: int) -> Scene:
    high = label  # index of the higher tone
    low_f, high_f = _log_uniform(rng, 200, 400), _log_uniform(rng, 800, 1600)
    seconds, amp = rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.6)
    freqs = [low_f, high_f] if high == 1 else [high_f, low_f]
    audio = _sequence([_tone(f, seconds, amp) for f in freqs], [rng.uniform(0.25, 0.45)])
    levels = ["high" if i == high else "low" for i in range(2)]
    return Scene(
        audio=audio,
        answer=f"the {ORDINALS[high]} tone",
        thinking=f"The first tone is {levels[0]} and the second tone is {levels[1]}. "
        f"So the {ORDINALS[high]} tone is higher.",
        cue=[f"{levels[0]} first tone", f"{levels[1]} second tone"],
    )


def _scene_beep_count(rng: np.random.Generator, label: int) -> Scene:
    count = label + 1
    freq, amp = _log_uniform(rng, 500, 1500), rng.uniform(0.3, 0.6)
    beeps = [_tone(freq, rng.uniform(0.08, 0.14), amp) for _ in range(count)]
    audio = _sequence(beeps, rng.uniform(0.2, 0.35, size=count - 1))
    word = COUNT_WORDS[count - 1]
    noun = "beep" if count == 1 else "beeps"
    return Scene(
        audio=audio,
        answer=word,
        thinking=f"I hear {word} separate {noun}. So there {'is' if count == 1 else 'are'} {word} {noun}.",
        cue=[f"{word} {noun}"],
    )


def _scene_louder(rng: np.random.Generator, label: int) -> Scene:
    loud = label
    freq, seconds = _log_uniform(rng, 300, 1200), rng.uniform(0.4, 0.7)
    loud_amp = rng.uniform(0.4, 0.7)
    quiet_amp = loud_amp * 10 ** (-rng.uniform(14, 24) / 20)
    amps = [loud_amp, quiet_amp] if loud == 0 else [quiet_amp, loud_amp]
    audio = _sequence([_tone(freq, seconds, a) for a in amps], [rng.uniform(0.25, 0.45)])
    levels = ["loud" if i == loud else "quiet" for i in range(2)]
    return Scene(
        audio=audio,
        answer=f"the {ORDINALS[loud]} sound",
        thinking=f"The first sound is {levels[0]} and the second sound is {levels[1]}. "
        f"So the {ORDINALS[loud]} sound is louder.",
        cue=[f"{levels[0]} first sound", f"{levels[1]} second sound"],
    )


def _scene_longer(rng: np.random.Generator, label: int) -> Scene:
    long = label
    freq, amp = _log_uniform(rng, 300, 1200), rng.uniform(0.3, 0.6)
    short_s = rng.uniform(0.25, 0.45)
    long_s = short_s * rng.uniform(2.5, 3.5)
    durations = [short_s, long_s] if long == 1 else [long_s, short_s]
    audio = _sequence([_tone(freq, s, amp) for s in durations], [rng.uniform(0.25, 0.45)])
    lengths = ["long" if i == long else "short" for i in range(2)]
    return Scene(
        audio=audio,
        answer=f"the {ORDINALS[long]} sound",
        thinking=f"The first sound is {lengths[0]} and the second sound is {lengths[1]}. "
        f"So the {ORDINALS[long]} sound is longer.",
        cue=[f"{lengths[0]} first sound", f"{lengths[1]} second sound"],
    )


def _scene_pitch_sweep(rng: np.random.Generator, label: int) -> Scene:
    rising = label == 0
    low_f, high_f = _log_uniform(rng, 200, 400), _log_uniform(rng, 1000, 2000)
    start, end = (low_f, high_f) if rising else (high_f, low_f)
    sweep = _sweep(start, end, rng.uniform(0.8, 1.6), rng.uniform(0.3, 0.6))
    audio = _sequence([sweep], [])
    first, last = ("low", "high") if rising else ("high", "low")
    answer = "rising" if rising else "falling"
    return Scene(
        audio=audio,
        answer=answer,
        thinking=f"The pitch starts {first} and ends {last}. So the pitch is {answer}.",
        cue=[f"{first} start", f"{last} end"],
    )


def _scene_noise_order(rng: np.random.Generator, label: int) -> Scene:
    noise_first = label == 0
    tone = _tone(_log_uniform(rng, 400, 1000), rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.5))
    noise = _noise(rng, rng.uniform(0.3, 0.5), rng.uniform(0.12, 0.18))
    events = [noise, tone] if noise_first else [tone, noise]
    audio = _sequence(events, [rng.uniform(0.25, 0.45)])
    first, second = ("noise burst", "tone") if noise_first else ("tone", "noise burst")
    answer = "before the tone" if noise_first else "after the tone"
    return Scene(
        audio=audio,
        answer=answer,
        thinking=f"The {first} is heard first and the {second} second. So the noise burst comes {answer}.",
        cue=[f"{first} first", f"{second} second"],
    )


# Roots on one whole-tone scale: major thirds stay on that scale and minor thirds never do, so no
# third of one quality coincides with a third of the other (a cue the tiny model can learn). The
# sixth octave puts a semitone at 60-110 Hz: 1.5-3 bins of a 400-point FFT at 16 kHz and about 2.4
# of Whisper's 128 mel bins, where the fifth octave would give under one FFT bin.
TRIAD_ROOTS_HZ = tuple(1046.5 * 2 ** (2 * i / 12) for i in range(6))  # C6 D6 E6 F#6 G#6 A#6


def _scene_triad(rng: np.random.Generator, label: int) -> Scene:
    major = label == 0
    root = TRIAD_ROOTS_HZ[int(rng.integers(len(TRIAD_ROOTS_HZ)))]
    semitones = (0, 4 if major else 3, 7)
    chord = _chord([root * 2 ** (s / 12) for s in semitones], rng.uniform(1.0, 1.8), rng.uniform(0.15, 0.25))
    audio = _sequence([chord], [])
    quality, interval = ("major", "a major third") if major else ("minor", "a minor third")
    return Scene(
        audio=audio,
        answer=quality,
        thinking=f"The middle note is {interval} above the root. So the chord is {quality}.",
        cue=[interval.removeprefix("a ")],
    )


TASKS: dict[str, TaskSpec] = {
    "higher_tone": TaskSpec(
        "Signal Layer",
        "Audio Difference Analysis",
        "sound",
        Question("Which tone is higher in pitch?", ("the first tone", "the second tone"), 2),
        Question(
            "Listen to the two tones. Which one has the higher pitch?",
            ("the first tone", "the second tone", "the same pitch"),
            3,
        ),
    ),
    "beep_count": TaskSpec(
        "Perception Layer",
        "Counting and Statistics",
        "sound",
        Question("How many beeps are there?", COUNT_WORDS, 4),
        Question("Count the beeps. How many do you hear?", COUNT_WORDS, 2),
    ),
    "louder": TaskSpec(
        "Signal Layer",
        "Acoustic Quality Analysis",
        "sound",
        Question("Which sound is louder?", ("the first sound", "the second sound"), 2),
        Question(
            "Listen to the two sounds. Which one is louder?",
            ("the first sound", "the second sound", "equally loud"),
            3,
        ),
    ),
    "longer": TaskSpec(
        "Perception Layer",
        "Temporal Analysis",
        "sound",
        Question("Which sound lasts longer?", ("the first sound", "the second sound"), 2),
        Question(
            "Listen to the two sounds. Which one is longer?",
            ("the first sound", "the second sound", "equally long"),
            3,
        ),
    ),
    "pitch_sweep": TaskSpec(
        "Signal Layer",
        "Audio Difference Analysis",
        "sound",
        Question("Is the pitch rising or falling?", ("rising", "falling"), 2),
        Question("How does the pitch of the sound change over time?", ("rising", "falling", "steady"), 3),
    ),
    "noise_order": TaskSpec(
        "Perception Layer",
        "Temporal Analysis",
        "sound",
        Question(
            "Does the noise burst come before or after the tone?", ("before the tone", "after the tone"), 2
        ),
        Question(
            "When does the noise burst occur relative to the tone?",
            ("before the tone", "after the tone", "at the same time"),
            3,
        ),
    ),
    "triad": TaskSpec(
        "Perception Layer",
        "Music Theory",
        "music",
        Question("Is this chord major or minor?", ("major", "minor"), 2),
        Question("What is the quality of this chord?", ("major", "minor", "diminished", "augmented"), 4),
    ),
}

# Scene renderer, number of answer classes (label i is the primary pool's option i) and the range
# the clip length is drawn from. Each range starts just above the longest lead (0.4 s) + the task's
# longest possible content + the tail pad (0.1 s), so every answer fits every length.
SCENES: dict[str, tuple[Callable[[np.random.Generator, int], Scene], int, tuple[float, float]]] = {
    "higher_tone": (_scene_higher_tone, 2, (2.4, 3.0)),  # content <= 2 x 0.7 + 0.45 s
    "beep_count": (_scene_beep_count, 5, (2.65, 3.25)),  # content <= 5 x 0.14 + 4 x 0.35 s
    "louder": (_scene_louder, 2, (2.4, 3.0)),  # content <= 2 x 0.7 + 0.45 s
    "longer": (_scene_longer, 2, (3.0, 3.6)),  # content <= 0.45 x (1 + 3.5) + 0.45 s
    "pitch_sweep": (_scene_pitch_sweep, 2, (2.15, 2.75)),  # content <= 1.6 s
    "noise_order": (_scene_noise_order, 2, (2.0, 2.6)),  # content <= 0.5 + 0.45 + 0.5 s
    "triad": (_scene_triad, 2, (2.35, 2.95)),  # content <= 1.8 s
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


# ---------------------------------------------------------------------------------------------
# Items and files.


def _choices(rng: np.random.Generator, question: Question, answer: str) -> list[str]:
    others = [c for c in question.pool if c != answer]
    picked = set(rng.choice(len(others), size=question.k - 1, replace=False).tolist())
    keep = {answer} | {others[i] for i in picked}
    return [c for c in question.pool if c in keep]  # pool order: prepare shuffles if asked to


def _rubric(scene: Scene) -> list[dict]:
    cue_points = [
        {
            "name": f"Cue Identification: {cue}",
            "scoring_point": f"Award 1 point if the test-taker identifies the {cue}.",
            "note": "Checks that the answer rests on the audible cue, not on a guess.",
            "choices": [0, 1],
        }
        for cue in scene.cue
    ]
    final = {
        "name": "Correct Selection",
        "scoring_point": f"Award 1 point if the test-taker selects '{scene.answer}'.",
        "note": "The answer is true by construction of the synthetic audio.",
        "choices": [0, 1],
    }
    return [*cue_points, final]


def _item(task: str, item_id: str, group: str, question: Question, choices: list[str], scene: Scene) -> dict:
    spec = TASKS[task]
    return {
        "id": item_id,
        "audio_path": f"audio/{item_id}.wav",
        "question": question.text,
        "choices": choices,
        "answer": scene.answer,
        "modality": spec.modality,
        "category": spec.category,
        "sub-category": spec.sub_category,
        "language": "en",
        "source": "synthetic",
        "url": None,
        "timestamp": None,
        "thinking": scene.thinking,
        "cue": list(scene.cue),
        "rubric": _rubric(scene),
        "group": group,
    }


def _balanced_label(task: str, k: int, seed: int) -> int:
    """Answer class of the task's k-th scene: a fresh permutation of all classes per block.

    Balanced answers keep the majority-class baseline at chance even on a few hundred items.
    """
    n_labels = SCENES[task][1]
    block_rng = np.random.default_rng([seed, 1, TASK_NAMES.index(task), k // n_labels])
    return int(block_rng.permutation(n_labels)[k % n_labels])


def scene_items(
    task: str, index: int, seed: int, label: int, variant_rate: float = DEFAULT_VARIANT_RATE
) -> tuple[np.ndarray, list[dict]]:
    """Render scene `index` of `task` with answer class `label`; return its audio and its 1-2 items.

    The scene's RNG is seeded from (seed, index) alone, so any scene can be regenerated on its own.
    Both items share the group `synth-<index>` and the same audio.
    """
    render, n_labels, clip = SCENES[task]
    spec = TASKS[task]
    rng = np.random.default_rng([seed, 0, index])
    scene = render(rng, label)
    scene.audio = _place(rng, scene.audio, clip)
    seconds = len(scene.audio) / SAMPLING_RATE
    # Cheap guards on the construction itself; tests/test_synth.py checks the audio independently.
    assert 0 <= label < n_labels and scene.answer == spec.primary.pool[label], (task, label, scene.answer)
    assert MIN_SECONDS <= seconds <= MAX_SECONDS and np.abs(scene.audio).max() <= 1.0, (task, index)
    group = f"synth-{index:05d}"
    questions = [spec.primary] + ([spec.variant] if rng.random() < variant_rate else [])
    items = [
        _item(task, f"{group}-{task}-{'ab'[i]}", group, q, _choices(rng, q, scene.answer), scene)
        for i, q in enumerate(questions)
    ]
    return scene.audio, items


def wav_bytes(audio: np.ndarray) -> bytes:
    """16-bit PCM mono WAV at 16 kHz; quantised by rounding so the bytes depend only on `audio`."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLING_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def parse_tasks(tasks: str | Sequence[str] | None) -> list[str]:
    """Task names from a comma-separated string or a list; None means all tasks."""
    if tasks is None:
        return list(TASK_NAMES)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [t for t in names if t]
    unknown = sorted(set(names) - set(TASKS))
    if unknown or not names:
        raise ValueError(f"bad --tasks {tasks!r} (unknown: {unknown}); choose from {', '.join(TASK_NAMES)}")
    return list(dict.fromkeys(names))


def generate(
    out_dir: Path,
    n: int,
    seed: int = 0,
    *,
    tasks: str | Sequence[str] | None = None,
    variant_rate: float = DEFAULT_VARIANT_RATE,
) -> Path:
    """Write `n` items (`<out_dir>/meta.jsonl`, `<out_dir>/audio/*.wav`) and return the meta path.

    Scenes cycle through `tasks` (default: all), so every task gets n/len(tasks) items give or take
    one scene. meta.jsonl is removed first and written last (atomically), so its presence means
    every audio file it lists is complete.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    names = parse_tasks(tasks)
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.jsonl"
    meta_path.unlink(missing_ok=True)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tqdm(total=n, desc="synth", unit="item") as bar:
        index = 0
        while len(rows) < n:
            task, k = names[index % len(names)], index // len(names)
            label = _balanced_label(task, k, seed)
            audio, items = scene_items(task, index, seed, label, variant_rate)
            data = wav_bytes(audio)
            for item in items[: n - len(rows)]:
                (out_dir / item["audio_path"]).write_bytes(data)
                rows.append(item)
                bar.update(1)
            index += 1
    atomic_write_jsonl(meta_path, rows)
    logger.info("wrote %d items (%d scenes, tasks %s) to %s", len(rows), index, ",".join(names), meta_path)
    return meta_path


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI entry point: `python -m data_prep.synth --out data/synth --n 2000 --seed 0`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/synth"), help="output folder")
    parser.add_argument("--n", type=int, default=2000, help="number of items (questions)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical output")
    parser.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASK_NAMES)}")
    parser.add_argument(
        "--variant_rate",
        type=float,
        default=DEFAULT_VARIANT_RATE,
        help="probability that a scene is asked a second time (same group)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    start = time.perf_counter()
    path = generate(args.out, args.n, args.seed, tasks=args.tasks, variant_rate=args.variant_rate)
    logger.info("done in %.1f s", time.perf_counter() - start)
    return path


if __name__ == "__main__":
    main()
