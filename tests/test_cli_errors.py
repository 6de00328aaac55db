"""What the user sees when the CLI fails: one line ``p2pchunks: <what>`` and status 1, never a traceback or an
exception group; a reader that leaves the pipe ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from p2pchunks.cli.main import BROKEN_PIPE, failure, main
from p2pchunks.errors import ChunkNotFound

from .swarmkit import address, agent_config, agents, make_image
from .test_cli import api_url, cli


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "ExceptionGroup" not in err
    assert lines[0].startswith("p2pchunks: ")
    return lines[0]


def test_keygen_into_a_missing_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "/nonexistent/dir/k"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line == "p2pchunks: keygen: /nonexistent/dir is not a directory (create it first)"


def test_keygen_where_it_may_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "k.key").write_text("already here\n")
    assert main(["keygen", str(tmp_path / "k")]) == 1
    assert "refusing to overwrite existing key file" in one_line(capsys.readouterr().err)


async def test_an_agent_that_cannot_be_reached_is_named_with_the_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("status", "--api", "http://127.0.0.1:9") == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("p2pchunks: cannot reach the agent at http://127.0.0.1:9 (GET /status): ConnectError")
    assert not line.endswith((":", ": ", "()"))


async def test_an_agent_that_does_not_answer_is_a_timeout_naming_the_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = address()
    listeners = await trio.open_tcp_listeners(0, host=host)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        held: list[trio.SocketStream] = []

        async def accept_and_say_nothing() -> None:
            held.append(await listeners[0].accept())
            await trio.sleep_forever()

        nursery.start_soon(accept_and_say_nothing)
        assert await cli("status", "--api", f"http://{host}:{port}", "--timeout", "0.3") == 1
        nursery.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    for listener in listeners:
        await listener.aclose()
    line = one_line(capsys.readouterr().err)
    agent = f"http://{host}:{port}"
    assert line == f"p2pchunks: the agent at {agent} did not answer within 0.3 s (GET /status: ReadTimeout)"


async def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    image = make_image(tmp_path, mib=0.25)
    from p2pchunks.hub.server import open_hub_server

    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        assert await cli("fetch", str(image.path), "--wait", "--api", api_url(a)) == 0
        read, write = os.pipe()
        os.close(read)  # `| head` that has already left: every write to stdout fails with EPIPE
        try:
            argv = [sys.executable, "-m", "p2pchunks", "cache", "--api", api_url(a), "ls", "--limit", "1000"]
            with trio.fail_after(60):
                done = await trio.run_process(argv, stdout=write, capture_stderr=True, check=False)
        finally:
            os.close(write)
    assert done.returncode == BROKEN_PIPE
    assert done.stderr == b""


async def test_a_file_in_the_way_of_the_output_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path, mib=0.25)
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a directory")
    from p2pchunks.hub.server import open_hub_server

    async with open_hub_server(tmp_path / "hub") as (_, url), agents([agent_config(tmp_path, url, name="a")]) as (a,):
        assert await cli("fetch", str(image.path), "--out", str(blocker / "img"), "--api", api_url(a)) == 1
        assert a.jobs.all() == []  # refused before a job was started
    line = one_line(capsys.readouterr().err.splitlines()[-1])
    assert line == f"p2pchunks: {blocker / 'img'}: Not a directory"


def test_a_group_is_told_by_its_most_telling_member() -> None:
    lost = "ab" * 32
    group = BaseExceptionGroup("from a nursery", [ValueError("x"), ExceptionGroup("inner", [ChunkNotFound(lost)])])
    assert failure(group) == (1, f"chunk {lost} not found")
    assert failure(ExceptionGroup("g", [FileNotFoundError(2, "No such file or directory", "/x/y")])) == (
        1,
        "/x/y: No such file or directory",
    )
    assert failure(ExceptionGroup("g", [OSError()])) == (1, "OSError")
    assert failure(BaseExceptionGroup("g", [ValueError("v"), KeyboardInterrupt()])) == (130, "")
    assert failure(ExceptionGroup("g", [BrokenPipeError(32, "Broken pipe")])) == (BROKEN_PIPE, "")
    status, message = failure(RuntimeError("boom"))
    assert status == 1
    assert message == "unexpected RuntimeError: boom (run with -vv to log the traceback)"


def test_the_demo_help_needs_no_agent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["demo", "--help"])
    assert stopped.value.code == 0
    assert "--image-mib" in capsys.readouterr().out


def test_the_command_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "p2pchunks", "keygen", "/nonexistent/dir/k"], capture_output=True, check=False
    )
    assert done.returncode == 1
    assert done.stderr.decode().strip() == "p2pchunks: keygen: /nonexistent/dir is not a directory (create it first)"
