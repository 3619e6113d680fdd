"""Reading artifacts back: what a file is (inspect), what it predicts (predict), how accurate
it is (evaluate), app code for it (snippets), and what this machine can run (doctor)."""
