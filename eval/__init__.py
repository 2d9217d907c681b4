"""Evaluation: generate (`eval.run`), extract (`eval.extract`), score (`eval.score`, MMAR's rule in
`eval.mmar`, statistics in `eval.stats`), compare runs (`eval.compare`), export MMAR / MMAU submissions
(`eval.export`) and judge reasoning with MMAR-Rubrics (`eval.rubrics`). Pure-Python modules import no torch, so GRPO rewards can use `extract_choice`."""
