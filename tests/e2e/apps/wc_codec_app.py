"""wc_app with the app's own codec, for the grow tests: `serialize` tags
every blob it makes and `deserialize` refuses one without the tag, so a
value that skipped the app's codec can't be decoded. Each `Total` (a
word's state) that `deserialize` rebuilds is logged, with the process id,
to the file named by the environment variable QUOLL_TEST_CODEC_LOG."""

import os
import pickle

from wc_app import Total, application_setup  # noqa: F401 (the app's entry point)

TAG = b"QC1"


def serialize(obj):
    return TAG + pickle.dumps(obj)


def deserialize(bs):
    if not bs.startswith(TAG):
        raise ValueError("a blob that serialize did not make")
    obj = pickle.loads(bs[len(TAG):])
    if isinstance(obj, Total):
        with open(os.environ["QUOLL_TEST_CODEC_LOG"], "a") as log:
            log.write(f"{os.getpid()} {obj.count}\n")
    return obj
