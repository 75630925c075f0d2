//! Cross-process, crash and restart tests live in `tests/`.
