"""Constants shared by the serving tests (a module of its own: `conftest` names clash across test dirs)."""

MODEL = "tiny"   # the model name the test servers announce
