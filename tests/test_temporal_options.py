"""The Temporal client options (berth.common.temporal_options, temporal_connection): what each
BERTH_TEMPORAL_* variable makes of Client.connect's arguments, and the clear error for each bad one.
Unit tests: the dev server that tests start has no TLS (tests/test_join.py shows a TLS client
refused by it with a clear message)."""

import pytest
from temporalio.service import TLSConfig

from berth.common.temporal_connection import connect_arguments
from berth.common.temporal_options import (
    TemporalOptionsError,
    check_or_exit,
    custom_options_set,
    temporal_options,
)
from berth.settings import Settings

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ca.pem").write_bytes(CA)
    (tmp_path / "client.pem").write_bytes(CA)
    (tmp_path / "client.key").write_bytes(KEY)
    (tmp_path / "api-key").write_text("key-123\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "not-pem").write_text("hello")
    return tmp_path


def settings(tmp_path, **env) -> Settings:
    return Settings.from_env({"BERTH_HOME": str(tmp_path / "home"), **{k: v.format(d=tmp_path) for k, v in env.items()}})


@pytest.mark.parametrize("env, expected", [
    ({}, {"namespace": "default", "tls": False, "api_key": None}),
    ({"BERTH_TEMPORAL_NAMESPACE": "berth-prod"}, {"namespace": "berth-prod", "tls": False, "api_key": None}),
    ({"BERTH_TEMPORAL_TLS": "1"}, {"namespace": "default", "tls": True, "api_key": None}),
    ({"BERTH_TEMPORAL_TLS": "false"}, {"namespace": "default", "tls": False, "api_key": None}),
    # an API key alone: TLS with the system roots (Temporal Cloud)
    ({"BERTH_TEMPORAL_API_KEY": "key-abc"}, {"namespace": "default", "tls": True, "api_key": "key-abc"}),
    ({"BERTH_TEMPORAL_API_KEY_FILE": "{d}/api-key"}, {"namespace": "default", "tls": True, "api_key": "key-123"}),
    ({"BERTH_TEMPORAL_TLS_CA": "{d}/ca.pem"},
     {"namespace": "default", "tls": TLSConfig(server_root_ca_cert=CA), "api_key": None}),
    ({"BERTH_TEMPORAL_TLS_CA": "{d}/ca.pem", "BERTH_TEMPORAL_TLS_CERT": "{d}/client.pem",
      "BERTH_TEMPORAL_TLS_KEY": "{d}/client.key", "BERTH_TEMPORAL_TLS_SERVER_NAME": "temporal.internal"},
     {"namespace": "default", "api_key": None,
      "tls": TLSConfig(server_root_ca_cert=CA, client_cert=CA, client_private_key=KEY, domain="temporal.internal")}),
    ({"BERTH_TEMPORAL_TLS_CERT": "{d}/client.pem", "BERTH_TEMPORAL_TLS_KEY": "{d}/client.key"},
     {"namespace": "default", "api_key": None, "tls": TLSConfig(client_cert=CA, client_private_key=KEY)}),
])
def test_options_become_client_arguments(files, env, expected):
    assert connect_arguments(temporal_options(settings(files, **env))) == expected


@pytest.mark.parametrize("env, message", [
    ({"BERTH_TEMPORAL_TLS_CA": "{d}/missing.pem"}, "BERTH_TEMPORAL_TLS_CA={d}/missing.pem: no such file"),
    ({"BERTH_TEMPORAL_TLS_CA": "{d}"}, "BERTH_TEMPORAL_TLS_CA={d}: a folder, not a file"),
    ({"BERTH_TEMPORAL_TLS_CA": "{d}/empty"}, "BERTH_TEMPORAL_TLS_CA={d}/empty: the file is empty"),
    ({"BERTH_TEMPORAL_TLS_CA": "{d}/not-pem"}, "not a PEM file"),
    ({"BERTH_TEMPORAL_TLS_CA": "ca.pem"}, "BERTH_TEMPORAL_TLS_CA='ca.pem': give an absolute path"),
    ({"BERTH_TEMPORAL_TLS_CERT": "{d}/client.pem"},
     "BERTH_TEMPORAL_TLS_CERT is set but BERTH_TEMPORAL_TLS_KEY is not"),
    ({"BERTH_TEMPORAL_TLS_KEY": "{d}/client.key"},
     "BERTH_TEMPORAL_TLS_KEY is set but BERTH_TEMPORAL_TLS_CERT is not"),
    ({"BERTH_TEMPORAL_TLS_CERT": "{d}/client.pem", "BERTH_TEMPORAL_TLS_KEY": "{d}/gone.key"},
     "BERTH_TEMPORAL_TLS_KEY={d}/gone.key: no such file"),
    ({"BERTH_TEMPORAL_API_KEY": "a", "BERTH_TEMPORAL_API_KEY_FILE": "{d}/api-key"}, "not both"),
    ({"BERTH_TEMPORAL_API_KEY_FILE": "{d}/empty"}, "the file is empty"),
    ({"BERTH_TEMPORAL_NAMESPACE": "two words"}, "is not a namespace name"),
])
def test_each_bad_option_is_named_with_what_is_wrong(files, env, message):
    with pytest.raises(TemporalOptionsError) as refused:
        temporal_options(settings(files, **env))
    assert message.format(d=files) in str(refused.value)
    with pytest.raises(SystemExit) as exited:  # what the worker and the API do at start
        check_or_exit(settings(files, **env))
    assert str(exited.value) == f"berth: {refused.value}"


def test_a_bad_tls_flag_is_refused_when_settings_are_read(tmp_path):
    with pytest.raises(SystemExit, match="BERTH_TEMPORAL_TLS='maybe' must be 1 or 0"):
        settings(tmp_path, BERTH_TEMPORAL_TLS="maybe")


def test_key_material_never_shows(files):
    chosen = settings(files, BERTH_TEMPORAL_API_KEY="key-abc", BERTH_TEMPORAL_TLS_CERT="{d}/client.pem",
                      BERTH_TEMPORAL_TLS_KEY="{d}/client.key")
    options = temporal_options(chosen)
    for text in (repr(chosen), repr(options), options.describe()):
        assert "key-abc" not in text and "secret-key-material" not in text
    assert options.describe() == "namespace default, TLS, mTLS client certificate, API key"


def test_berth_up_names_the_options_its_dev_server_cannot_take(files):
    assert custom_options_set(settings(files)) == []
    chosen = settings(files, BERTH_TEMPORAL_TLS="1", BERTH_TEMPORAL_API_KEY="k")
    assert custom_options_set(chosen) == ["BERTH_TEMPORAL_TLS", "BERTH_TEMPORAL_API_KEY"]
