"""Options shared by the end-to-end and Kafka tests."""


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true",
                     help="long fault runs (the crash storms last 120 s instead of 14 s, the Kafka "
                          "storm 90 s instead of 15 s); not for CI")
