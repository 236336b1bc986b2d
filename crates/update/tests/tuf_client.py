#!/usr/bin/env python3
"""The TUF reference client (python-tuf's ngclient) against a repository Rampart published.

    tuf_client.py METADATA_DIR BASE_URL TARGET_DIR NAME...

METADATA_DIR holds the trusted root.json. Refreshes (root chain, timestamp, snapshot,
targets, delegations), then downloads and verifies each NAME. Prints "OK NAME PATH" per
target; exits 1 with the exception on the first failure.
"""
import sys

from tuf.ngclient import Updater


def main():
    metadata_dir, base, target_dir, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    updater = Updater(
        metadata_dir=metadata_dir,
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        target_dir=target_dir,
    )
    try:
        updater.refresh()
        print("root version", updater._trusted_set.root.version)
        for name in names:
            info = updater.get_targetinfo(name)
            if info is None:
                print(f"MISSING {name}")
                sys.exit(1)
            path = updater.download_target(info)
            print(f"OK {name} {path}")
    except Exception as e:  # report which check python-tuf refused
        print(f"REFUSED {type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
