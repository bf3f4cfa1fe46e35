"""Realistic customer-service chats in Spanish and English, for compression measurements.

What a store of this bridge holds: short user messages (typos, emoji, order numbers, names,
dates), longer assistant replies, and per message the fields the bridge stores with it: a
wamid (base64 that embeds the sender's phone and a random id), our reply id and Meta's ids of
the sent parts, delivery status, the message it answers. Sentences are built from templates
with many fillers, so the text is varied (not one sentence repeated), and the ids are random
as Meta's and ours are: the part of a snapshot that compresses worst.
"""

from __future__ import annotations

import base64
import random
from typing import Any

from bridge.conversations import Conversation, Message

NAMES = ["Ana", "Lucía", "Javier", "Marta", "Pablo", "Sofía", "John", "Emily", "Oliver", "Chloe"]
PRODUCTS_ES = ["zapatillas", "chaqueta", "mochila", "camiseta", "vestido", "auriculares", "reloj"]
PRODUCTS_EN = ["sneakers", "jacket", "backpack", "t-shirt", "dress", "headphones", "watch"]
COLORS_ES = ["azul", "negro", "rojo", "verde", "blanco", "beige", "gris"]
COLORS_EN = ["blue", "black", "red", "green", "white", "beige", "grey"]
CITIES = ["Madrid", "Sevilla", "Valencia", "Bilbao", "London", "Manchester", "Bristol", "Leeds"]
DAYS_ES = ["lunes", "martes", "miércoles", "jueves", "viernes", "sábado"]
DAYS_EN = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
EMOJI = ["", "", "", " 😊", " 🙏", " 😕", " 👍", "!!", "??"]

USER_ES = [
    "Hola{e}",
    "Buenas, ¿tenéis {p} en {c} talla {s}?",
    "Quería saber cómo va mi pedido {o}",
    "No me ha llegado todavía el pedido {o}{e}",
    "¿Hacéis envíos a {city}?",
    "vale gracias{e}",
    "¿A qué hora abrís el {d}?",
    "Me llegó {p} en {c} pero pedí otro color",
    "¿Puedo devolver {p} si no me queda bien?",
    "Soy {n}, os escribí ayer por lo de la factura",
    "perfecto, muchas gracias {n}{e}",
    "¿Cuánto tarda el envío a {city}? lo necesito para el {d}",
    "la web no me deja pagar con tarjeta, me sale error {o}",
    "ok",
]
USER_EN = [
    "Hi{e}",
    "Do you have the {p} in {c}, size {s}?",
    "Where is my order {o}?",
    "My order {o} still hasn't arrived{e}",
    "Do you ship to {city}?",
    "thanks a lot{e}",
    "What time do you open on {d}?",
    "I got the {p} in {c} but I ordered a different colour",
    "Can I return the {p} if it doesn't fit?",
    "This is {n}, I wrote yesterday about the invoice",
    "great, thank you{e}",
    "How long does delivery to {city} take? I need it by {d}",
    "the checkout keeps failing with error {o}",
    "ok",
]
ASSISTANT_ES = [
    "¡Hola{nn}! Gracias por escribirnos. ¿En qué te podemos ayudar hoy?",
    "Sí, nos quedan {p} en {c} en las tallas {s} y {s2}. ¿Quieres que te reserve una?",
    "He revisado el pedido {o}: salió de nuestro almacén el {d} y llegará a {city} en 2-3 "
    "días laborables. Te hemos enviado el enlace de seguimiento por correo.",
    "Lo siento mucho por las molestias. He pasado tu caso al equipo de envíos y te "
    "escribiremos antes del {d} con una solución.",
    "Claro, aceptamos devoluciones durante 30 días desde la entrega, siempre que {p} esté sin "
    "usar y con la etiqueta. Puedes pedir la recogida desde tu cuenta.",
    "Abrimos de {d} a sábado de 10:00 a 20:00; los domingos la tienda está cerrada.",
    "Sí, enviamos a {city}. El envío estándar tarda de 3 a 5 días y es gratis a partir de 50 €.",
    "Gracias, {n}. ¿Me confirmas el número de pedido para revisarlo?",
]
ASSISTANT_EN = [
    "Hi{nn}! Thanks for reaching out. How can we help you today?",
    "Yes, we still have the {p} in {c} in sizes {s} and {s2}. Shall I put one aside for you?",
    "I've checked order {o}: it left our warehouse on {d} and should reach {city} within 2-3 "
    "working days. We've emailed you the tracking link.",
    "I'm really sorry about the trouble. I've passed your case to our shipping team and we'll "
    "get back to you before {d} with a solution.",
    "Of course, returns are accepted within 30 days of delivery as long as the {p} is unused "
    "and still has its tag. You can book a pickup from your account.",
    "We're open {d} to Saturday from 10am to 8pm; the shop is closed on Sundays.",
    "Yes, we ship to {city}. Standard delivery takes 3-5 days and is free over £50.",
    "Thanks, {n}. Could you confirm the order number so I can look into it?",
]


def _fill(template: str, rnd: random.Random, english: bool) -> str:
    return template.format(
        e=rnd.choice(EMOJI),
        p=rnd.choice(PRODUCTS_EN if english else PRODUCTS_ES),
        c=rnd.choice(COLORS_EN if english else COLORS_ES),
        s=rnd.choice(["S", "M", "L", "XL", "38", "40", "42"]),
        s2=rnd.choice(["S", "M", "L", "XL", "39", "41", "43"]),
        o=f"{rnd.randint(10000, 99999)}",
        city=rnd.choice(CITIES),
        d=rnd.choice(DAYS_EN if english else DAYS_ES),
        n=rnd.choice(NAMES),
        nn=rnd.choice(["", " " + rnd.choice(NAMES)]),
    )


def wamid(phone: str, rnd: random.Random) -> str:
    """An id shaped like Meta's: base64 of a protobuf-ish blob holding the phone and 20 random
    hex digits."""
    inner = (
        b"\x18\x0b"
        + phone.encode()
        + b"\x15\x02\x00\x12\x18\x14"
        + rnd.randbytes(10).hex().upper().encode()
        + b"\x00"
    )
    return "wamid." + base64.b64encode(b"\x1c" + inner).decode()


def conversation(index: int, messages: int, now_ms: int, rnd: random.Random) -> Conversation:
    """One user's chat: `messages` messages, user and assistant in turn, in one language."""
    phone = f"{rnd.choice(['34', '44'])}{600000000 + index}"
    english = phone.startswith("44") if rnd.random() < 0.8 else not phone.startswith("44")
    conv = Conversation(phone, messages, now_ms)
    moment = now_ms - messages * 90_000
    asked: str | None = None
    for n in range(messages):
        moment += rnd.randint(2_000, 90_000)
        if n % 2 == 0:
            text = _fill(rnd.choice(USER_EN if english else USER_ES), rnd, english)
            asked = wamid(phone, rnd)
            conv.append(Message("user", text, moment, id=asked, type="text"))
        else:
            text = _fill(rnd.choice(ASSISTANT_EN if english else ASSISTANT_ES), rnd, english)
            conv.append(
                Message(
                    "assistant",
                    text,
                    moment,
                    id="out." + rnd.randbytes(12).hex(),
                    status=rnd.choice(["read", "read", "delivered", "sent"]),
                    wamids=(wamid(phone, rnd),),
                    reply_to=asked,
                )
            )
    conv.contact_name = rnd.choice(NAMES)
    return conv


def conversations(count: int, messages: int, now_ms: int, seed: int = 15) -> list[Conversation]:
    rnd = random.Random(seed)
    return [conversation(i, messages, now_ms, rnd) for i in range(count)]


def seed_json(convs: list[Conversation]) -> list[list[Any]]:
    """The conversations as the seed's sessions.json pairs (what a v1 snapshot stored)."""
    return [[c.key, c.to_seed()] for c in convs]
