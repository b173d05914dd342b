"""TLS on the links between workers (--tls-cert, --tls-key, --tls-ca).

Certificates are made here with the `cryptography` package: a CA and a
worker certificate for 127.0.0.1 (an IP address subjectAltName, serverAuth
and clientAuth), and the same from another CA for the stranger.

- `test_word_count_over_tls`: 2-worker word count with TLS gives exact
  counts, and what worker1 sends on its control link (recorded by a proxy
  between it and the initializer) never shows its name or its Join in the
  clear, as it does without TLS.
- `test_strangers_are_refused_and_change_nothing`: while a TLS cluster
  counts, a worker with a certificate of another CA and a worker without
  TLS try to join; each exits saying why, the initializer says why for each
  (naming the peer's address), nothing rolls back and the counts are exact.
- `test_a_tls_worker_is_told_the_cluster_has_no_tls`: the initializer of a
  plain cluster says a TLS joiner speaks TLS; the joiner says the TLS
  handshake broke off and asks whether the peer runs with the flags.
- `test_a_certificate_must_name_the_address`: a worker refuses an
  initializer whose certificate names another IP address, and says so.
- `test_tls_flags_come_together`: a missing flag is named.
"""

import datetime
import ipaddress
import os
import sys
from pathlib import Path

# scripts/setup.sh installs `cryptography`; without it these tests fail
# rather than skip, so a run can't pass without checking TLS.
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import EXAMPLES, MACHIDA3, Proc, assert_word_counts, free_port, send_lines, wait_until
from test_word_count import make_lines, reference_counts

APPS = Path(__file__).resolve().parent / "apps"
ATTACKER = [sys.executable, str(APPS / "attacker.py")]
WC = EXAMPLES / "word_count"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(label):
    """A CA's key and self-signed certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(f"{label} CA")).issuer_name(_name(f"{label} CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(directory, ca, ip="127.0.0.1"):
    """A worker certificate for `ip` signed by `ca`, and the CA, as PEM
    files in `directory`; returns the worker flags that use them."""
    ca_key, ca_cert = ca
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(f"worker {ip}")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "worker.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / "worker.key", key)
    return ["--tls-cert", str(directory / "worker.pem"), "--tls-key", str(directory / "worker.key"),
            "--tls-ca", str(directory / "ca.pem")]


def make_pki(directory, label):
    """A new CA and one worker certificate for 127.0.0.1; the worker flags."""
    return issue(directory, make_ca(label))


def tcp_word_count(make_cluster, make_receiver, workers, extra_flags, start=True):
    out = make_receiver()
    cluster = make_cluster("word_count", WC, workers, extra_flags=extra_flags, start=start,
                           app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr])
    return cluster, out


def count_exactly(cluster, out, tmp_path, n_lines=300):
    inputs = [make_lines(n_lines, seed=10 + i) for i in range(cluster.n)]
    for i, lines in enumerate(inputs):
        send_lines(cluster.in_ports[i], lines, tmp_path, label=f"input{i}")
    expected = reference_counts([line for lines in inputs for line in lines])
    out.wait_for_lines(sum(expected.values()), timeout=60)
    return expected


def joiner(cluster, tmp_path, label, flags, name="worker1", external_port=None, env=None):
    """A worker started by hand as `name`, with `flags` instead of the
    cluster's TLS flags."""
    cmd = [MACHIDA3, "--application-module", "word_count", "--name", name,
           "--external", f"127.0.0.1:{external_port or free_port()}", "--control", f"127.0.0.1:{cluster.control}",
           *flags, "--in", f"lines@127.0.0.1:{free_port()}", "--out", f"127.0.0.1:{free_port()}"]
    return Proc(cmd, tmp_path, label, env=env or cluster.env).start()


def test_word_count_over_tls(make_cluster, make_receiver, tmp_path):
    tls = make_pki(tmp_path / "pki", "cluster")
    cluster, out = tcp_word_count(make_cluster, make_receiver, 2, tls, start=False)
    proxy_port = free_port()
    record = tmp_path / "control-link.bin"
    proxy = Proc([*ATTACKER, "proxy", str(proxy_port), f"127.0.0.1:{cluster.control}", str(record)],
                 tmp_path, "proxy").start()
    try:
        init = Proc(cluster.command(0), tmp_path, "worker0", env=cluster.env).start()
        cluster.workers.append(init)
        # The proxy gives up if the initializer is not listening yet.
        wait_until(lambda: "waiting for 1 more worker(s)" in init.stdout(), 15, f"the initializer\n{init.describe()}")
        via_proxy = [a if a != f"127.0.0.1:{cluster.control}" else f"127.0.0.1:{proxy_port}"
                     for a in cluster.command(1)]
        cluster.workers.append(Proc(via_proxy, tmp_path, "worker1", env=cluster.env).start())
        cluster.wait_ready()
        assert all("links between workers run TLS 1.3" in w.stderr() + w.stdout() for w in cluster.workers), \
            cluster.describe()
        expected = count_exactly(cluster, out, tmp_path)
        cluster.shutdown()
        assert_word_counts({"receiver": out.lines()}, expected, cluster.describe)
        sent = record.read_bytes()
        assert len(sent) > 1000, f"the proxy recorded {len(sent)} bytes"
        assert b"worker1" not in sent, "worker1's name went out in the clear"
        assert sent[0] == 0x16, "the control link did not begin with a TLS handshake record"
    finally:
        proxy.stop()


def test_strangers_are_refused_and_change_nothing(make_cluster, make_receiver, tmp_path):
    tls = make_pki(tmp_path / "pki", "cluster")
    other_ca = make_pki(tmp_path / "other", "stranger")
    cluster, out = tcp_word_count(make_cluster, make_receiver, 2, tls)
    init = cluster.workers[0]
    control = f"127.0.0.1:{cluster.control}"

    # A worker whose certificate another CA signed (right cookie, a member's name).
    stranger = joiner(cluster, tmp_path, "other-ca", other_ca)
    assert stranger.wait(20) == 2, stranger.describe()
    said = stranger.stderr()
    assert f"the initializer at {control} and this worker can't authenticate each other: TLS: " in said, \
        stranger.describe()
    assert "not signed by this worker's --tls-ca" in said, stranger.describe()
    wait_until(lambda: "refused this worker's certificate" in init.stderr(), 10,
               f"the initializer to say why it refused the stranger\n{init.describe()}")
    refusal = next(line for line in init.stderr().splitlines() if "refused this worker's certificate" in line)
    assert "--control, connection from 127.0.0.1:" in refusal, refusal

    # A worker without TLS (right cookie, a member's name).
    plain = joiner(cluster, tmp_path, "plain", [])
    assert plain.wait(20) == 2, plain.describe()
    said = plain.stderr()
    assert f"the initializer at {control} and this worker can't authenticate each other" in said, plain.describe()
    assert "it requires TLS" in said and "--tls-cert, --tls-key and --tls-ca" in said, plain.describe()
    wait_until(lambda: "the peer did not start TLS" in init.stderr(), 10,
               f"the initializer to say why it refused the plain worker\n{init.describe()}")

    expected = count_exactly(cluster, out, tmp_path)
    assert all(w.alive() for w in cluster.workers), cluster.describe()
    assert all("rolling back" not in w.stdout() + w.stderr() for w in cluster.workers), cluster.describe()
    cluster.shutdown()
    assert_word_counts({"receiver": out.lines()}, expected, cluster.describe)


def test_a_tls_worker_is_told_the_cluster_has_no_tls(make_cluster, make_receiver, tmp_path):
    tls = make_pki(tmp_path / "pki", "cluster")
    cluster, out = tcp_word_count(make_cluster, make_receiver, 2, [], start=False)
    init = Proc(cluster.command(0), tmp_path, "worker0", env=cluster.env).start()
    cluster.workers.append(init)
    wait_until(lambda: "waiting for 1 more worker(s)" in init.stdout(), 15, f"the initializer\n{init.describe()}")
    tls_joiner = joiner(cluster, tmp_path, "tls-joiner", tls)
    try:
        wait_until(lambda: "the peer speaks TLS and this worker has no --tls-cert" in init.stderr(), 15,
                   f"the initializer to refuse the TLS worker\n{init.describe()}")
        # Retrying is logged at info level, on stdout.
        wait_until(lambda: "the TLS handshake broke off" in tls_joiner.stdout(), 15,
                   f"the TLS worker to say why\n{tls_joiner.describe()}")
        assert "does the peer run with --tls-cert, --tls-key and --tls-ca too?" in tls_joiner.stdout()
        assert init.alive(), init.describe()
    finally:
        tls_joiner.stop()


def test_a_certificate_must_name_the_address(make_cluster, make_receiver, tmp_path):
    ca = make_ca("cluster")
    elsewhere = issue(tmp_path / "init", ca, ip="127.0.0.2")  # the initializer is reached at 127.0.0.1
    cluster, out = tcp_word_count(make_cluster, make_receiver, 2, [], start=False)
    init = Proc(cluster.command(0) + elsewhere, tmp_path, "worker0", env=cluster.env).start()
    cluster.workers.append(init)
    wait_until(lambda: "waiting for 1 more worker(s)" in init.stdout(), 15, f"the initializer\n{init.describe()}")
    member = joiner(cluster, tmp_path, "member", issue(tmp_path / "member", ca))
    assert member.wait(20) == 2, member.describe()
    assert f"the initializer at 127.0.0.1:{cluster.control} and this worker can't authenticate each other: TLS: " \
        in member.stderr(), member.describe()
    assert "must name the IP address it is reached at as a subjectAltName" in member.stderr(), member.describe()
    assert init.alive(), init.describe()


def test_tls_flags_come_together(tmp_path):
    tls = make_pki(tmp_path / "pki", "cluster")
    cmd = [MACHIDA3, "--application-module", "word_count", "--name", "initializer", "--cluster-initializer",
           *tls[:4]]
    p = Proc(cmd, tmp_path, "half-tls", env=dict(os.environ, PYTHONPATH=str(WC))).start()
    assert p.wait(20) != 0, p.describe()
    assert "--tls-ca is missing: give all three of --tls-cert, --tls-key and --tls-ca" in p.stderr(), p.describe()
