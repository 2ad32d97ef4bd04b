"""Pure-stdlib RSA key generation (PKCS#1 PEM) for the service-account signing key, so
the test plane needs neither openssl nor the cryptography package."""

from __future__ import annotations

import math
import secrets
from base64 import b64encode

_SMALL_PRIMES = [p for p in range(3, 2000) if all(p % d for d in range(2, int(p**0.5) + 1))]


def _probably_prime(n: int, rounds: int = 24) -> bool:
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        a = 2 + secrets.randbelow(n - 3)
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _random_prime(bits: int) -> int:
    while True:
        # top two bits set => the product of two such primes has exactly 2*bits bits
        c = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _probably_prime(c):
            return c


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der_int(v: int) -> bytes:
    b = v.to_bytes(v.bit_length() // 8 + 1, "big")  # always room for a sign bit
    while len(b) > 1 and b[0] == 0 and b[1] < 0x80:
        b = b[1:]
    return b"\x02" + _der_len(len(b)) + b


def _rsa_primes(bits: int, e: int) -> tuple[int, int]:
    while True:
        p, q = _random_prime(bits // 2), _random_prime(bits // 2)
        if p != q and math.gcd(e, math.lcm(p - 1, q - 1)) == 1:
            return max(p, q), min(p, q)


def rsa_private_key_pem(bits: int = 2048) -> bytes:
    """A new RSA private key, PKCS#1 PEM ("RSA PRIVATE KEY"), as Go's x509 parses it."""
    e = 65537
    p, q = _rsa_primes(bits, e)
    n, d = p * q, pow(e, -1, math.lcm(p - 1, q - 1))
    fields = [0, n, e, d, p, q, d % (p - 1), d % (q - 1), pow(q, -1, p)]
    body = b"".join(_der_int(f) for f in fields)
    der = b"\x30" + _der_len(len(body)) + body
    b64 = b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----\n"
    ).encode()
