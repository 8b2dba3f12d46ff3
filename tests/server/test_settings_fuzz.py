"""Property tests (hypothesis) for `load_server_settings`: any environment gives settings or a
`ConfigError` naming the setting, never another exception, in a few milliseconds of CPU.
"""

from __future__ import annotations

import gc
import json
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth import ConfigError
from server._settings import ServerSettings, load_server_settings

_QUIET = [HealthCheck.too_slow]
settings.register_profile("ci", max_examples=200, deadline=None, database=None, suppress_health_check=_QUIET)
settings.register_profile("deep", max_examples=5000, deadline=None, database=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.timeout(300)

BASE = {"MCP_AUTH_ISSUER": "https://t.accounts.ondemand.com", "MCP_RESOURCE_URL": "https://mcp.example.com/mcp"}
load_server_settings(BASE)  # warm-up: first-call imports and caches are not the input's cost
NAMES = ["HOST", "PORT", "MCP_ALLOWED_HOSTS", "MCP_ALLOWED_ORIGINS", "MCP_MAX_BODY_BYTES", "MCP_LOG_LEVEL",
         "MCP_NOTES_DB", "MCP_TLS_CERT", "MCP_TLS_KEY", "MCP_TLS_CLIENT_CA", "VCAP_APPLICATION", "MCP_RESOURCE_URL",
         "MCP_AUTH_ISSUER"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=3),
    max_leaves=8,
)
VALUES = (st.text(max_size=30) | json_values.map(json.dumps)
          | st.sampled_from(["8080", "0", "65536", "-1", "\u00b2", "\u0661\u0662", "1024", "99999999999", "debug",
                             "0.0.0.0", "::1", "localhost", "https://a.example:99999/mcp", "http://[::1", ""])
          | st.dictionaries(st.just("application_uris"), json_values, max_size=1).map(json.dumps))


@given(env=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=6), dev=st.booleans())
def test_load_server_settings_on_any_environment_gives_settings_or_config_error(env: dict[str, str],
                                                                                  dev: bool) -> None:
    gc.disable()  # a full collection of the test process's heap says nothing about the input
    started = time.thread_time()
    try:
        result = load_server_settings(BASE | env, dev=dev)
    except ConfigError as exc:
        assert exc.setting and str(exc).startswith(exc.setting)
    else:
        assert isinstance(result, ServerSettings)
        assert 0 <= result.port <= 65535 and result.max_body_bytes >= 1024
    finally:
        elapsed = time.thread_time() - started
        gc.enable()
    assert elapsed < 0.05  # milliseconds of CPU, with a wide margin


@pytest.mark.parametrize(("name", "value"), [
    ("PORT", "\u00b2"),                 # str.isdigit() is true, int() fails
    ("PORT", "\u0661\u0662"),           # Arabic-Indic digits: int() would read 12
    ("MCP_MAX_BODY_BYTES", "\u00b2"),
    ("VCAP_APPLICATION", '{"application_uris": true}'),
])
def test_odd_digits_and_non_list_routes_stop_the_start_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_server_settings(BASE | {name: value})
    assert caught.value.setting == name
