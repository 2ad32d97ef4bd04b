"""A deliberately flawed web helper: scanward's demo scans it. Do not deploy."""

import hashlib
import pickle
import subprocess

import yaml

DATABASE_PASSWORD = "hunter2"  # hard-coded secret


def run(command: str) -> int:
    # Shell injection: the command comes from the request.
    return subprocess.call(command, shell=True)


def load_session(blob: bytes) -> object:
    return pickle.loads(blob)  # untrusted deserialisation


def load_config(text: str) -> object:
    return yaml.load(text)  # unsafe loader


def token(user: str) -> str:
    return hashlib.md5(user.encode()).hexdigest()  # weak hash
