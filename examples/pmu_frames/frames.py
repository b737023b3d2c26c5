"""PMU-like terminal frames in EBCDIC (cp1147), laid out by the copybooks in `copybooks/`.

`generate(n, seed)` returns a realistic mix: bet requests (T031 Q) and, a few ms later, their responses
(T031 R, same bet id, 4% rejected), payments of winning tickets (T033), cancellations of earlier bets
(T034) and a few terminal starts (T001); `corrupt_share` of the frames are then damaged in one of three
ways: a bad packed-decimal sign in the stake (decodes with `stake` null and listed in `_corrupt_fields`),
a truncated frame, or an unknown frame type (both quarantined). `bet_frames(n, seed)` gives 200-byte
T031 requests only (8 horses: the benchmark unit). `DECODER_OPTIONS` is the `cobol` option table a
source config points at (paths relative to this folder); `decoder()` builds the decoder from it.

    from examples.pmu_frames.frames import decoder, generate
    batch = decoder().decode_arrow(generate(10_000, seed=1))
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from headwater.sources.cobol import CobolDecoder
from headwater.sources.cobol.encode import Encoder

HERE = Path(__file__).resolve().parent
DECODER_OPTIONS: dict[str, Any] = {
    "header_copybook": "copybooks/header.cpy",
    "copybooks": {
        "T001": "copybooks/t001.cpy",
        "T031": "copybooks/t031.cpy",
        "T033": "copybooks/t033.cpy",
        "T034": "copybooks/t034.cpy",
    },
    "type_field": "FRAME-TYPE",
    "code_page": "cp1147",
    "redefines": {
        "REQUEST-DATA": {"field": "DIRECTION", "cases": {"Q": "REQUEST-DATA", "R": "RESPONSE-DATA"}},
        "PAYMENT-REF": {"field": "PAYMENT-METHOD", "cases": {"C": "CARD-PAYMENT", "K": "CASH-PAYMENT"}},
    },
}

BET_TYPES = ("SIMPLE GAGN", "SIMPLE PLACE", "COUPLE", "TRIO", "MULTI", "QUINTE+", "2SUR4", "TIERCE")
HORSES_BY_TYPE = {"SIMPLE GAGN": 1, "SIMPLE PLACE": 1, "COUPLE": 2, "TRIO": 3, "2SUR4": 4, "TIERCE": 3}
POINTS_OF_SALE = ("Café des Sports", "Le Balto", "Tabac de la Gare", "PMU Bercy", "Bar L'Hippodrome",
                  "Brasserie Épinal", "Le Français", "Café du Commerce", "Tabac Chez Gégé",
                  "Le Cheval Blanc")  # fmt: skip
NAMES = ("Hélène Dupré", "François Lefèvre", "Jérôme Garçon", "Zoé Bréval", "Noël Mercier", "Anaïs Côté",
         "Loïc Besançon", "Cécile Faure", "Mathéo Rocher", "Inès Lambert", "Gaël Perrin", "Renée Noël")  # fmt: skip
CITIES = ("Paris", "Besançon", "Orléans", "Nîmes", "Montréal-la-Cluse", "Fontainebleau", "Évreux", "Chantilly")
REASONS = ("Erreur de saisie", "Demande du parieur", "Course annulée", "Cheval non-partant", "Mise refusée €")
BASE = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)


def decoder() -> CobolDecoder:
    """The decoder for these frames."""
    return CobolDecoder.from_options(DECODER_OPTIONS, HERE)


class _Writer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.encoder = Encoder(decoder())
        self.sequence: dict[str, int] = {}
        self.clock = BASE

    def header(self, frame_type: str, direction: str, terminal: str, at: datetime) -> dict[str, Any]:
        self.sequence[terminal] = self.sequence.get(terminal, 0) + 1
        return {
            "frame_type": frame_type,
            "direction": direction,
            "terminal_id": terminal,
            "sequence_no": self.sequence[terminal],
            "ts_datetime": int(at.strftime("%Y%m%d%H%M%S")),
            "ts_millis": at.microsecond // 1000,
        }

    def encode(self, frame_type: str, values: dict[str, Any]) -> bytes:
        values["body_length"] = self.encoder.length(values, frame_type) - 40
        return self.encoder.encode(values, frame_type)


def _bet(w: _Writer, bet_id: int, terminal: str, at: datetime, horses: int | None = None) -> dict[str, Any]:
    rng = w.rng
    bet_type = rng.choice(BET_TYPES)
    count = horses or HORSES_BY_TYPE.get(bet_type) or rng.randint(4, 8)
    runners = rng.sample(range(1, 19), count)
    return {
        **w.header("T031", "Q", terminal, at),
        "bet_id": bet_id,
        "race_date": int(at.strftime("%Y%m%d")),
        "reunion": rng.randint(1, 9),
        "course": rng.randint(1, 9),
        "bet_type": bet_type,
        "stake": rng.choice((1, 1.5, 2, 2, 3, 5, 10, 20, 50)) * count,
        "channel": rng.choice("TTTTWM"),
        "point_of_sale": rng.choice(POINTS_OF_SALE),
        "bettor_name": rng.choice(NAMES),
        "payment_mode": rng.choice("EECK"),
        "flexi_percent": rng.choice((100, 100, 100, 50, 25)),
        "horse_count": count,
        "horse_no": runners,
        "horse_odds": [round(rng.uniform(1.1, 80.0), 2) for _ in runners],
        "horse_flags": [rng.choice(("  ", "NP", "FV", "  ")) for _ in runners],
    }


def bet_frames(n: int, seed: int = 0) -> list[bytes]:
    """n T031 bet requests of 200 bytes each (8 horses)."""
    w = _Writer(random.Random(seed))
    terminals = [f"T{t:07d}" for t in range(500)]
    return [
        w.encode("T031", _bet(w, 10**9 + i, terminals[i % 500], BASE + timedelta(milliseconds=i), horses=8))
        for i in range(n)
    ]


def generate(n: int, seed: int = 0, corrupt_share: float = 0.01) -> list[bytes]:
    """n frames: the mix described above, in time order, with `corrupt_share` of them damaged."""
    rng = random.Random(seed)
    w = _Writer(rng)
    terminals = [f"T{t:07d}" for t in range(max(10, n // 400))]
    frames: list[bytes] = []
    open_bets: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    next_bet = 10**9 + seed * 10**6
    at = BASE
    while len(frames) < n:
        at += timedelta(milliseconds=rng.randint(0, 3))
        roll = rng.random()
        if pending and (roll < 0.45 or len(pending) > 20):
            bet = pending.pop(0)
            response = {**bet, **w.header("T031", "R", bet["terminal_id"], at)}
            rejected = rng.random() < 0.04
            response.update(
                status_code="KO" if rejected else "OK",
                reject_reason=rng.choice((12, 40, 77)) if rejected else 0,
                ticket_no=None if rejected else rng.randint(10**8, 10**9 - 1),
            )
            for key in ("payment_mode", "flexi_percent"):
                response.pop(key)
            frames.append(w.encode("T031", response))
            if not rejected:
                open_bets.append(response)
        elif roll < 0.88 or not open_bets:
            bet = _bet(w, next_bet, rng.choice(terminals), at)
            next_bet += 1
            pending.append(bet)
            frames.append(w.encode("T031", bet))
        elif roll < 0.93:
            bet = open_bets.pop(rng.randrange(len(open_bets)))
            method = rng.choice("CKO")
            payment: dict[str, Any] = {
                **w.header("T033", "Q", bet["terminal_id"], at),
                "bet_id": bet["bet_id"],
                "ticket_no": bet["ticket_no"],
                "amount": round(float(bet["stake"]) * rng.uniform(1.2, 30), 2),
                "payment_method": method,
                "currency": "EUR",
            }
            if method == "C":
                payment.update(card_last4=rng.randint(0, 9999), auth_code=f"A{rng.randint(0, 9999999):07d}")
            elif method == "K":
                payment.update(drawer_no=rng.randint(1, 4), cashier_id=f"C{rng.randint(0, 99999):05d}")
            else:
                payment["payment_ref"] = "VIREMENT"
            frames.append(w.encode("T033", payment))
        elif roll < 0.98:
            bet = open_bets.pop(rng.randrange(len(open_bets)))
            frames.append(
                w.encode(
                    "T034",
                    {
                        **w.header("T034", "Q", bet["terminal_id"], at),
                        "bet_id": bet["bet_id"],
                        "reason_code": rng.randint(1, 5),
                        "reason_text": rng.choice(REASONS),
                        "refund": bet["stake"],
                        "operator_id": rng.randint(1, 999999),
                    },
                )
            )
        else:
            terminal = rng.choice(terminals)
            frames.append(
                w.encode(
                    "T001",
                    {
                        **w.header("T001", "Q", terminal, at),
                        "software_version": "V4.2.17",
                        "operator_id": rng.randint(1, 999999),
                        "shop_name": rng.choice(POINTS_OF_SALE),
                        "city": rng.choice(CITIES),
                        "postcode": rng.randint(1000, 95999),
                        "opening_float": round(rng.uniform(100, 2000), 2),
                        "last_shutdown_ts": int((at - timedelta(hours=14)).strftime("%Y%m%d%H%M%S")),
                        "cabinet_temp": round(rng.uniform(-5, 45), 1),
                    },
                )
            )
    return _damage(frames[:n], rng, corrupt_share)


def _damage(frames: list[bytes], rng: random.Random, share: float) -> list[bytes]:
    stake_at = 40 + 12 + 12 + 12 + 4  # last byte of STAKE in a T031 frame
    for i in rng.sample(range(len(frames)), int(len(frames) * share)):
        kind = rng.choice(("sign", "truncated", "type"))
        frame = bytearray(frames[i])
        if kind == "sign" and frame[:4] == "T031".encode("cp1147"):
            frame[stake_at] = (frame[stake_at] & 0xF0) | 0xA
        elif kind == "truncated":
            frame = frame[: rng.randint(10, len(frame) - 1)]
        else:
            frame[:4] = "T099".encode("cp1147")
        frames[i] = bytes(frame)
    return frames
