"""Training the learned editors (MEND, InstructEdit) for a model: `kbchat train-editor`.

`records` turns the shared data's training splits into `methods.mend.EditRecord`s (three tasks,
a seeded held-out validation split by case); `command` loads the model as the app does and runs
`methods.mend.train` with a progress bar.
"""
