from pathlib import Path

from mxw_local.cli import app
from mxw_local.stack import SERVICES, StackConfig, Supervisor
from mxw_shared.auth import JwksVerifier
from mxw_shared.devissuer import AUDIENCE, ISSUER
from typer.testing import CliRunner


async def test_token_command_mints_a_token_the_services_accept(tmp_path: Path):
    result = CliRunner().invoke(app, ["token", "alice", "--admin", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    verifier = JwksVerifier(
        (tmp_path / "auth" / "jwks.json").as_uri(),
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["RS256"],
    )
    principal = await verifier.verify(token)
    assert (principal.sub, principal.is_admin) == ("alice", True)
    assert (tmp_path / "auth" / "dev-signing-key.pem").stat().st_mode & 0o077 == 0


def test_services_get_one_consistent_environment(tmp_path: Path):
    config = StackConfig(data_dir=tmp_path, postgres_port=1111, kafka_port=2222)
    supervisor = Supervisor(config)
    envs = {name: supervisor.service_env(name) for name in SERVICES}

    for name, env in envs.items():
        assert env["MXW_SERVICE_NAME"] == name
        assert env["MXW_PORT"] == str(config.ports[name])
        assert env["MXW_DATABASE_URL"].endswith(":1111/mxwhisper")
        assert env["MXW_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:2222"
        # tansu rejects InitProducerId, so the local stack must not ask for idempotence.
        assert env["MXW_KAFKA_IDEMPOTENT_PRODUCER"] == "false"
        assert env["HF_HUB_OFFLINE"] == "1"
    # The gateway authenticates to the embedder with the stack's generated service token.
    token = envs["gateway"]["MXW_EMBEDDER_SERVICE_TOKEN"]
    assert len(token) >= 32
    assert envs["embedder"]["MXW_SERVICE_TOKEN"] == token
    assert envs["gateway"]["MXW_EMBEDDER_URL"] == config.url("embedder")
    assert envs["gateway"]["MXW_DEV_JWKS_PATH"] == str(tmp_path.resolve() / "auth" / "jwks.json")
    # Stable across restarts: the same secret is read back, not regenerated.
    assert Supervisor(config).service_env("embedder")["MXW_SERVICE_TOKEN"] == token


def test_submit_without_a_token_explains_how_to_get_one(tmp_path: Path):
    audio = tmp_path / "a.ogg"
    audio.write_bytes(b"x")
    result = CliRunner().invoke(
        app, ["submit", str(audio), "--data-dir", str(tmp_path)], env={"MXW_TOKEN": ""}
    )
    assert result.exit_code == 2
    assert "mxw token" in result.output


def test_c1_local_stack_enables_dev_sign_in_and_warns_beyond_loopback(tmp_path: Path):
    local = StackConfig(data_dir=tmp_path)
    assert Supervisor(local).service_env("gateway")["MXW_DEV_SIGN_IN"] == "true"
    assert local.exposure_warning() is None
    assert StackConfig(data_dir=tmp_path, host="::1").exposure_warning() is None
    exposed = StackConfig(data_dir=tmp_path, host="0.0.0.0")
    warning = exposed.exposure_warning()
    assert warning is not None
    assert "0.0.0.0" in warning
    assert "admin" in warning
    assert StackConfig(data_dir=tmp_path, host="box.lan").exposure_warning() is not None
    # Without dev sign-in nothing mints tokens over HTTP: no warning, and the gateway is told.
    closed = StackConfig(data_dir=tmp_path, host="0.0.0.0", dev_sign_in=False)
    assert closed.exposure_warning() is None
    assert Supervisor(closed).service_env("gateway")["MXW_DEV_SIGN_IN"] == "false"


def test_c1_up_has_a_switch_for_dev_sign_in():
    result = CliRunner().invoke(app, ["up", "--help"])
    assert result.exit_code == 0
    assert "--no-dev-sign-in" in result.output
