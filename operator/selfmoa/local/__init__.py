"""The local executor (`selfmoa run`) and its console."""
