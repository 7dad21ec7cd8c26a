"""How many SMS segments a message body takes, the way carriers (and Twilio) count them.

A body written entirely in the GSM-7 alphabet (3GPP TS 23.038, basic set plus the
extension table reached through ESC) is sent 7 bits a character: 160 characters fit a
single SMS; a longer body is split into parts of 153 (the user-data header takes 7). An
extension character (``^{}\\[~]|€`` and form feed) costs two septets and is never split
across two parts. Anything else forces UCS-2: 70 UTF-16 code units in a single SMS, 67 a
part when split, a surrogate pair never split.
"""

from __future__ import annotations

__all__ = ["GSM7_BASIC", "GSM7_EXTENDED", "encoding", "count_segments"]

# The 128 characters of the GSM 03.38 default alphabet (ESC, 0x1B, excluded: it only
# introduces the extension table and cannot appear on its own in a body).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each costs ESC + the character, two septets.
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")

_GSM_SINGLE, _GSM_MULTI = 160, 153
_UCS2_SINGLE, _UCS2_MULTI = 70, 67


def encoding(body: str) -> str:
    """``"GSM-7"`` when every character of ``body`` is in the GSM-7 alphabet, else ``"UCS-2"``."""
    allowed = GSM7_BASIC | GSM7_EXTENDED
    return "GSM-7" if all(ch in allowed for ch in body) else "UCS-2"


def _pack(units: list[int], single: int, multi: int) -> int:
    """Segments needed for characters costing ``units`` each, never splitting a character."""
    total = sum(units)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, room = 1, multi
    for cost in units:
        if cost > room:
            segments += 1
            room = multi
        room -= cost
    return segments


def count_segments(body: str) -> int:
    """Number of SMS segments for ``body`` (0 for an empty body)."""
    if encoding(body) == "GSM-7":
        return _pack([2 if ch in GSM7_EXTENDED else 1 for ch in body], _GSM_SINGLE, _GSM_MULTI)
    # UCS-2 on the wire is really UTF-16: characters outside the BMP take two code units.
    return _pack([2 if ord(ch) > 0xFFFF else 1 for ch in body], _UCS2_SINGLE, _UCS2_MULTI)
