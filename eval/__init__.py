"""Evaluation: generate (`eval.run`), extract (`eval.extract`), score (`eval.score`, MMAR's rule in
`eval.mmar`, statistics in `eval.stats`), compare runs (`eval.compare`) and export MMAR submissions
(`eval.export`). Pure-Python modules import no torch, so GRPO rewards can use `extract_choice`."""
