"""The multi-tool experiment (issue 42): one model, the Calculator, QA and the Calendar, each where it helps."""
