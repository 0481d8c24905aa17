import pytest

from metrics.language import detect_language, language_matches


@pytest.mark.parametrize("text, code", [
    ("ご注文ありがとうございます。明日発送します。", "ja"),
    ("注文番号 A-1234 は東京へ発送済みです。", "ja"),
    ("您的订单已经发货了。", "zh"),
    ("주문해 주셔서 감사합니다.", "ko"),
    ("Thank you for your order; it will ship today.", "en"),
    ("Merci pour votre commande, elle est expédiée.", "fr"),
    ("Vielen Dank für Ihre Bestellung, sie ist unterwegs.", "de"),
    ("Gracias por su pedido, se envía hoy.", "es"),
    ("Спасибо за ваш заказ.", "ru"),
    ("Дякуємо за ваше замовлення, воно їде.", "uk"),
    ("Ευχαριστούμε για την παραγγελία σας.", "el"),
    ("شكرا لطلبك", "ar"),
])
def test_detects_the_language(text, code):
    assert detect_language(text).code == code


def test_undecided_and_ambiguous_cases():
    assert detect_language("12345 !!").code is None and detect_language("12345").name == "text without letters"
    assert detect_language("Okay").code is None and detect_language("Okay").script == "latin"
    assert language_matches("Okay", "en")[0]  # too short to tell, but the right script
    assert language_matches("東京都", "ja")[0]  # kanji only: Japanese or Chinese
    assert not language_matches("Thank you for your order.", "ja")[0]
    assert not language_matches("ご注文ありがとうございます。", "en")[0]
