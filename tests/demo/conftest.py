"""One smoke-profile demo run shared by the demo tests (it trains six tiny models, so it runs once per session)."""

import pytest

from vistok.demo import DemoConfig, run_demo


@pytest.fixture(scope="session")
def smoke_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run = run_demo(DemoConfig(out=str(out), profile="smoke", progress=False))
    return run
