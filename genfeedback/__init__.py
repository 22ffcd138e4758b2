"""The chain's entry points: recipes (genfeedback/configs) turned into graphs of stage commands.

`python -m genfeedback run|llava|eval`; scripts/pipeline.sh, train_llava.sh and eval.sh call it. It
runs the stages as commands (llava_plugin.jobs) and imports them only to check a run's inputs
before the first job starts.
"""
