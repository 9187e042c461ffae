"""lm-evaluation-harness as a capability measure (`evaluation.lmEval`), used by
`selfmoa.stages.capability`: `runner` runs lm-eval's tasks on a local model, offline, in the
process state `runtime` sets up. A helper of the stages, not a stage."""
