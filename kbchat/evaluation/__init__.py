"""Evaluation of edits, in one place: benchmark data (`datasets`), teacher-forced and generation
metrics (`metrics`), a case's probes (`probes`), the `kbchat bench` runner (`runner`) and its
table (`tables`). Generation itself goes through the one decoder, `kbchat.runtime.decoding`."""
