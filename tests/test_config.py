import pytest

from tradecache import Settings
from tradecache.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("TRADECACHE_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults(clean_env):
    s = Settings()
    assert s.url == "redis://localhost:6379/0"
    assert s.namespace == "tc"
    assert s.socket_timeout == 1.0
    assert s.codec == "json"


def test_environment_and_precedence(clean_env):
    clean_env.setenv("REDIS_URL", "redis://a:1/0")
    assert Settings().url == "redis://a:1/0"
    clean_env.setenv("TRADECACHE_URL", "redis://b:2/0")
    assert Settings().url == "redis://b:2/0"
    clean_env.setenv("TRADECACHE_POOL_SIZE", "7")
    clean_env.setenv("TRADECACHE_NAMESPACE", "prod")
    s = Settings()
    assert (s.pool_size, s.namespace) == (7, "prod")
    assert Settings(url="redis://c:3/0", pool_size=9).url == "redis://c:3/0"


def test_env_file_is_opt_in(clean_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("TRADECACHE_NAMESPACE=fromfile\n")
    clean_env.chdir(tmp_path)
    assert Settings().namespace == "tc"
    assert Settings(_env_file=str(env_file)).namespace == "fromfile"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRADECACHE_POOL_SIZE", "-1"),
        ("TRADECACHE_POOL_SIZE", "lots"),
        ("TRADECACHE_SOCKET_TIMEOUT", "0"),
        ("TRADECACHE_SOCKET_TIMEOUT", "nan"),
        ("TRADECACHE_RETRY_BACKOFF", "-1"),
        ("TRADECACHE_NAMESPACE", "a{b}"),
        ("TRADECACHE_CODEC", "xml"),
    ],
)
def test_invalid_values_name_the_variable(clean_env, variable, value):
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        Settings()
    assert info.value.field == variable
    assert variable in str(info.value)


def test_invalid_url_never_echoes_the_password(clean_env):
    with pytest.raises(ConfigError) as info:
        Settings(url="http://user:hunter2@x/")
    assert info.value.field == "TRADECACHE_URL/REDIS_URL"
    assert "hunter2" not in str(info.value)


def test_secrets_never_in_repr(clean_env):
    s = Settings(url="redis://user:hunter2@host:6379/0", password="s3cret", sentinel_password="x1")
    text = repr(s) + str(s)
    assert "hunter2" not in text and "s3cret" not in text and "x1'" not in text
    assert "redis://user:***@host:6379/0" in text
    assert s.redacted_url == "redis://user:***@host:6379/0"
    assert s.password is not None and s.password.get_secret_value() == "s3cret"


def test_settings_are_frozen(clean_env):
    s = Settings()
    with pytest.raises(Exception, match="frozen"):
        s.namespace = "x"  # type: ignore[misc]
