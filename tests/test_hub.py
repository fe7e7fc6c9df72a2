"""An unreachable hub fails at once, with one line, instead of a minute of printed retries."""

import time

import pytest

from masa import hub
from masa.data.loaders import DataError, load_problems
from masa.models import ModelLoadError, load_model


@pytest.fixture
def no_hub(monkeypatch):
    # A closed local port: the connection is refused at once, as on a machine without network.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.hub_unreachable.cache_clear()
    yield
    hub.hub_unreachable.cache_clear()


def test_a_hub_model_or_dataset_fails_fast_when_the_hub_is_unreachable(no_hub):
    assert "127.0.0.1 cannot be reached" in hub.hub_unreachable()
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache, and the hub is unreachable"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(DataError, match="hub is unreachable"):
        load_problems("no-such-org/no-such-dataset")
    assert time.monotonic() - started < 10  # the retries alone took 51 s


def test_offline_mode_is_respected_without_probing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: pytest.fail("probed the hub"))
    hub.hub_unreachable.cache_clear()
    try:
        assert hub.hub_unreachable() == "HF_HUB_OFFLINE is set"
    finally:
        hub.hub_unreachable.cache_clear()
