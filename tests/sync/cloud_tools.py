"""A remote tool the cloud runs in the tests (a price lookup a device cannot do)."""


def price(part: str) -> dict:
    if part == "broken":
        raise ValueError("no price for broken parts")
    return {"part": part, "eur": 12.5}


def review(input: dict, context: dict) -> dict:
    """A step a device hands to the cloud: logs each call (the test's ledger), then answers
    after the delay the run asked for."""
    import time
    from pathlib import Path
    with Path("reviews.log").open("a") as f:
        f.write(f"{context.get('input', {}).get('id')}\n")
    time.sleep(float(input.get("delay", 0)))
    if input.get("fail"):
        raise RuntimeError("the reviewer cannot read this document")
    return {"verdict": "approved", "by": "cloud-reviewer", "doc": input.get("doc")}


def slow_price(part: str) -> dict:
    """A remote tool that takes its time (the cloud's tool pool stays busy with it)."""
    import time
    time.sleep(3)
    return {"part": part, "eur": 13.0}
