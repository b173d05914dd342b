"""Tests of quoll.worker_args.parse_worker_argv (docs/wallaroo-compat.md,
"Worker command line")."""

import pytest

from quoll.worker_args import (WorkerArgs, WorkerArgsError, parse_worker_argv,
                               split_addr)

BASE = ["machida3", "--application-module", "app"]


def parse(*args):
    return parse_worker_argv(BASE + list(args))


def test_harness_initializer_command():
    argv = ["machida3", "--application-module", "APP",
            "--in", "Detector@127.0.0.1:7000", "--out", "127.0.0.1:7002",
            "--metrics", "127.0.0.1:5001", "--resilience-dir",
            "/tmp/res-data.X", "--name", "initializer", "--worker-count", "2",
            "--data", "127.0.0.1:6001", "--external", "127.0.0.1:5050",
            "--cluster-initializer", "--control", "127.0.0.1:6000",
            "--run-with-resilience", "--ponythreads=1", "--ponypinasio",
            "--ponynoblock"]
    a = parse_worker_argv(argv)
    assert isinstance(a, WorkerArgs)
    assert a.application_module == "APP"
    assert a.app_args == ["machida3", "--in", "Detector@127.0.0.1:7000",
                          "--out", "127.0.0.1:7002"]
    assert a.wallaroo_args == tuple(argv[:-3])
    assert isinstance(a.wallaroo_args, tuple)
    assert a.metrics == "127.0.0.1:5001"
    assert a.resilience_dir == "/tmp/res-data.X"
    assert a.name == "initializer"
    assert a.worker_count == 2
    assert a.data == "127.0.0.1:6001"
    assert a.external == "127.0.0.1:5050"
    assert a.cluster_initializer is True
    assert a.control == "127.0.0.1:6000"
    assert a.run_with_resilience is True
    assert a.role == "initializer"


def test_harness_member_and_joiner_commands():
    a = parse("--in", "D@127.0.0.1:7100", "--out", "127.0.0.1:7002",
              "--metrics", "127.0.0.1:5001", "--name", "worker1",
              "--my-control", "127.0.0.1:6100", "--my-data", "127.0.0.1:6101",
              "--external", "127.0.0.1:5051", "--control", "127.0.0.1:6000",
              "--ponythreads", "1")
    assert a.app_args == ["machida3", "--in", "D@127.0.0.1:7100", "--out",
                          "127.0.0.1:7002"]
    assert (a.name, a.my_control, a.my_data, a.control) == (
        "worker1", "127.0.0.1:6100", "127.0.0.1:6101", "127.0.0.1:6000")
    assert a.cluster_initializer is False and a.role == "member"
    assert a.worker_count == 1 and not a.worker_count_given
    j = parse("--name", "w3", "--join", "127.0.0.1:6000", "--worker-count",
              "2")
    assert j.join == "127.0.0.1:6000" and j.worker_count == 2
    assert j.role == "joiner"


def test_defaults():
    a = parse()
    assert a.app_args == ["machida3"]
    assert a.wallaroo_args == tuple(BASE)
    assert a.resilience_dir == "/tmp"
    assert a.time_between_checkpoints == 1_000_000_000
    assert a.stop_pause == 2_000_000_000
    assert a.worker_count == 1
    assert a.run_with_resilience is False
    assert a.log_rotation is False
    assert a.event_log_file_size is None
    assert a.resilience_enable_io_journal is False
    assert a.resilience_no_local_file_io is False
    assert a.dos_servers == []
    assert a.on_user_error == "skip"
    assert a.max_frame_size == 16777216
    assert a.batch_size == 512
    assert a.log_level is None
    assert a.help is False
    assert a.role == "standalone"
    assert a.name is None


@pytest.mark.parametrize("flag,attr,value,expected", [
    ("-m", "metrics", "h:1", "h:1"),
    ("-c", "control", "h:2", "h:2"),
    ("-x", "my_control", "h:3", "h:3"),
    ("-y", "my_data", "h:4", "h:4"),
    ("-e", "external", "h:5", "h:5"),
    ("-f", "file", "faults.txt", "faults.txt"),
    ("-n", "name", "w1", "w1"),
    ("-r", "resilience_dir", "/var/res", "/var/res"),
    ("-l", "event_log_file_size", "4096", 4096),
    ("-u", "stop_pause", "5", 5),
])
def test_short_flags_all_forms(flag, attr, value, expected):
    for form in ([flag, value], [flag + value], [flag + "=" + value]):
        a = parse("--in", "x", *form, "tail")
        assert getattr(a, attr) == expected, form
        assert a.app_args == ["machida3", "--in", "x", "tail"], form


@pytest.mark.parametrize("flag,attr,value,expected", [
    ("--metrics", "metrics", "h:1", "h:1"),
    ("--control", "control", "h:2", "h:2"),
    ("--my-control", "my_control", "h:3", "h:3"),
    ("--my-data", "my_data", "h:4", "h:4"),
    ("--external", "external", "h:5", "h:5"),
    ("--file", "file", "f", "f"),
    ("--name", "name", "w1", "w1"),
    ("--resilience-dir", "resilience_dir", "/r", "/r"),
    ("--resilience-dir", "resilience_dir", "s3://b/run", "s3://b/run"),
    ("--event-log-file-size", "event_log_file_size", "10", 10),
    ("--stop-pause", "stop_pause", "0", 0),
    ("--time-between-checkpoints", "time_between_checkpoints", "250000000",
     250000000),
    ("--spike-seed", "spike_seed", "42", 42),
    ("--spike-prob", "spike_prob", "0.25", 0.25),
    ("--spike-margin", "spike_margin", "3", 3),
    ("--resilience-dos-server", "dos_servers", "a:1,b:2",
     [("a", "1"), ("b", "2")]),
    ("--on-user-error", "on_user_error", "fail", "fail"),
    ("--max-frame-size", "max_frame_size", "1024", 1024),
    ("--batch-size", "batch_size", "64", 64),
    ("--log-level", "log_level", "DEBUG", "debug"),
])
def test_long_flags_both_forms(flag, attr, value, expected):
    extra = []
    if flag == "--resilience-dos-server":
        extra = ["-t"]
    for form in ([flag, value], [flag + "=" + value]):
        a = parse("--app-flag", *form, "pos", *extra)
        assert getattr(a, attr) == expected, form
        assert a.app_args == ["machida3", "--app-flag", "pos"], form


@pytest.mark.parametrize("flag,attr", [
    ("--cluster-initializer", "cluster_initializer"),
    ("-t", "cluster_initializer"),
    ("--run-with-resilience", "run_with_resilience"),
    ("--log-rotation", "log_rotation"),
    ("--resilience-enable-io-journal", "resilience_enable_io_journal"),
    ("--resilience-no-local-file-io", "resilience_no_local_file_io"),
    ("--spike-drop", "spike_drop"),
])
def test_switches(flag, attr):
    a = parse("a1", flag, "a2")
    assert getattr(a, attr) is True
    assert a.app_args == ["machida3", "a1", "a2"]


def test_worker_count_forms():
    for form in (["-w", "3"], ["-w3"], ["-w=3"], ["--worker-count", "3"],
                 ["--worker-count=3"]):
        a = parse("-t", "-d", "h:1", *form)
        assert a.worker_count == 3 and a.worker_count_given
        assert a.app_args == ["machida3"]


def test_data_and_join_forms():
    a = parse("-t", "-d", "h:1")
    assert a.data == "h:1"
    a = parse("--data=h:9", "--cluster-initializer")
    assert a.data == "h:9"
    for form in (["-j", "h:2"], ["-jh:2"], ["--join=h:2"]):
        assert parse(*form).join == "h:2"


def test_clustered_short_flags():
    a = parse("-tw2", "-d", "h:1")
    assert a.cluster_initializer and a.worker_count == 2
    a = parse("-tn", "foo")
    assert a.cluster_initializer and a.name == "initializer"
    # an unknown letter ends the cluster and stays for the app
    a = parse("-ti", "x")
    assert a.cluster_initializer
    assert a.app_args == ["machida3", "-i", "x"]


def test_application_module_forms_and_help_removed():
    a = parse_worker_argv(["m", "--x", "--application-module=mod", "y"])
    assert a.application_module == "mod"
    assert a.app_args == ["m", "--x", "y"]
    a = parse_worker_argv(["m", "-h", "--application-module", "mod", "--in",
                           "v"])
    assert a.help is True
    assert a.app_args == ["m", "--in", "v"]
    a = parse_worker_argv(["m", "--help"])
    assert a.help is True and a.application_module is None


def test_help_skips_validation():
    a = parse_worker_argv(["m", "--help", "--data", "h:1", "-w", "0"])
    assert a.help


def test_pony_flags_removed_everywhere():
    argv = ["machida3", "--ponythreads", "4", "--application-module", "app",
            "--ponynoblock", "--in", "a", "--ponythreads=2", "--ponypin",
            "--ponyminthreads", "1", "--ponycdinterval=100",
            "--ponygcinitial", "14", "--ponygcfactor", "2.0",
            "--ponysuspendthreshold", "10", "--ponynoyield", "--ponynoscale",
            "--ponypinasio", "--ponymaxthreads", "3", "--out", "b",
            "--ponyversion", "--ponyunknownflag", "-t"]
    a = parse_worker_argv(argv)
    assert a.app_args == ["machida3", "--in", "a", "--out", "b"]
    assert a.wallaroo_args == ("machida3", "--application-module", "app",
                               "--in", "a", "--out", "b", "-t")


def test_order_preserved_with_positionals_and_app_flags():
    argv = ["/usr/bin/machida3", "pos1", "--in", "N@h:1", "-n", "w",
            "--window-size", "50", "--application-module", "app", "pos2",
            "--kafka_source_topic", "t", "-c", "h:2", "-i", "v",
            "--ponythreads", "1", "--out=h:3", "-v", "--", "-", "last"]
    a = parse_worker_argv(argv)
    assert a.app_args == ["/usr/bin/machida3", "pos1", "--in", "N@h:1",
                          "--window-size", "50", "pos2",
                          "--kafka_source_topic", "t", "-i", "v",
                          "--out=h:3", "-v", "--", "-", "last"]
    assert a.wallaroo_args == tuple(
        x for x in argv if x not in ("--ponythreads", "1"))
    assert a.name == "w" and a.control == "h:2"


def test_app_meant_short_flags_are_stripped_like_wallaroo():
    # An app that uses -n for itself loses it, exactly as under Wallaroo.
    a = parse("-n", "5", "--count", "3")
    assert a.app_args == ["machida3", "--count", "3"]
    assert a.name == "5"


def test_argv0_kept_even_if_it_looks_like_a_flag():
    a = parse_worker_argv(["--ponyweird", "--application-module", "m"])
    assert a.app_args == ["--ponyweird"]
    assert a.wallaroo_args == ("--ponyweird", "--application-module", "m")


def test_last_value_wins():
    a = parse("--name", "a", "-n", "b")
    assert a.name == "b"


def test_quoll_flags_are_stripped():
    a = parse("--on-user-error", "fail", "--max-frame-size=99",
              "--batch-size", "7", "--log-level=warning", "--x")
    assert a.app_args == ["machida3", "--x"]
    assert (a.on_user_error, a.max_frame_size, a.batch_size, a.log_level) == \
        ("fail", 99, 7, "warn")
    assert "--on-user-error" in a.wallaroo_args


def test_tls_flags_are_stripped():
    a = parse("--tls-cert", "c.pem", "--tls-key=k.pem", "--tls-ca", "a.pem", "--x")
    assert a.app_args == ["machida3", "--x"]
    assert (a.tls_cert, a.tls_key, a.tls_ca) == ("c.pem", "k.pem", "a.pem")


def test_metrics_flags():
    """quoll's --metrics-listen is taken and stripped; Wallaroo's --metrics
    stays accepted (and is not what quoll serves on)."""
    a = parse("--metrics-listen", "127.0.0.1:9100", "-m", "127.0.0.1:5001", "--x")
    assert a.app_args == ["machida3", "--x"]
    assert (a.metrics_listen, a.metrics) == ("127.0.0.1:9100", "127.0.0.1:5001")
    assert parse("--metrics-listen=h:1").metrics_listen == "h:1"


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

def expect_error(argv, *fragments):
    with pytest.raises(WorkerArgsError) as ei:
        parse_worker_argv(argv)
    msg = str(ei.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_missing_application_module():
    msg = expect_error(["machida3", "--in", "x"],
                       "You must provide Machida with --application-module")
    assert "hint" in msg


@pytest.mark.parametrize("args,fragments", [
    (["--data", "h:1"], ["--data/-d", "cluster initializer"]),
    (["-t", "-w", "2"], ["--data/-d"]),
    (["-t", "--join", "h:1"], ["--cluster-initializer/-t", "--join"]),
    (["-t", "-d", "h:1", "-w", "0"], ["--worker-count/-w", "at least 1"]),
    (["--control", "h:1", "-w", "2"], ["--worker-count/-w", "initializer"]),
    (["--control", "h:1", "-w", "1"], ["--worker-count/-w", "initializer"]),
    (["-w", "2"], ["--worker-count/-w", "initializer", "--join"]),
    (["-r", "/tmp/res/"], ["--resilience-dir/-r", "must not end in '/'",
                           "'/tmp/res'"]),
    (["-r", "s3:///prefix"], ["--resilience-dir/-r", "s3://BUCKET",
                              "needs a bucket name"]),
    (["-w", "two"], ["--worker-count/-w", "integer", "'two'"]),
    (["--time-between-checkpoints", "1e9"], ["--time-between-checkpoints",
                                             "integer"]),
    (["--time-between-checkpoints", "0"], ["--time-between-checkpoints",
                                           "positive"]),
    (["--spike-prob", "x"], ["--spike-prob", "number"]),
    (["--name"], ["--name/-n", "requires a value"]),
    (["--name", "-x"], ["--name/-n", "requires a value", "--name=VALUE"]),
    (["--name="], ["--name/-n", "requires a value"]),
    (["-n="], ["--name/-n", "requires a value"]),
    (["-n"], ["--name/-n", "last argument"]),
    (["--cluster-initializer=yes"], ["--cluster-initializer/-t",
                                     "takes no value"]),
    (["--control", "nohostport"], ["--control/-c", "HOST:PORT"]),
    (["--my-data", "h:"], ["--my-data/-y", "HOST:PORT"]),
    (["--resilience-dos-server", "a:1", "--control", "h:1"],
     ["--my-control/-x", "--my-data/-y"]),
    (["--resilience-dos-server", "nope", "-t"], ["--resilience-dos-server",
                                                 "HOST:PORT"]),
    (["--on-user-error", "ignore"], ["--on-user-error", "'skip' or 'fail'"]),
    (["--max-frame-size", "0"], ["--max-frame-size"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--log-level", "loud"], ["--log-level", "'loud'"]),
    (["-l", "0"], ["--event-log-file-size/-l"]),
    (["-u", "-5"], ["--stop-pause/-u", "requires a value"]),
    (["-u=-5"], ["--stop-pause/-u", ">= 0"]),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem"], ["--tls-ca is missing", "all three"]),
    (["--tls-ca", "a.pem"], ["--tls-cert is missing", "or none"]),
    (["--tls-cert", "c.pem", "--tls-ca", "a.pem"], ["--tls-key is missing"]),
    (["--metrics-listen", "9100"], ["--metrics-listen", "HOST:PORT"]),
])
def test_errors(args, fragments):
    expect_error(BASE + args, *fragments)


def test_dos_server_with_my_addresses_ok():
    a = parse("--resilience-dos-server", "a:1,b:2", "--control", "h:1",
              "-x", "h:2", "-y", "h:3", "-n", "w1")
    assert a.dos_servers == [("a", "1"), ("b", "2")]


def test_single_initializer_without_data_is_fine():
    a = parse("-t")
    assert a.worker_count == 1 and a.data is None


def test_standalone_worker_may_say_one_worker():
    a = parse("-w", "1")
    assert a.role == "standalone" and a.worker_count == 1


def test_split_addr():
    assert split_addr("127.0.0.1:7000") == ("127.0.0.1", "7000")
    assert split_addr(":7000") == ("", "7000")
    with pytest.raises(ValueError):
        split_addr("nohost")
