"""A remote tool the cloud runs in the tests (a price lookup a device cannot do)."""


def price(part: str) -> dict:
    if part == "broken":
        raise ValueError("no price for broken parts")
    return {"part": part, "eur": 12.5}
