"""Language codes: the project's code (ISO 639-1, `zh` = Simplified, `pt` = Brazilian) -> each source's own
name for it, and the language-ID labels that count as a match."""

from __future__ import annotations

from data_prep.files import DataError

# debian-handbook directory names (html/<dir>/)
HANDBOOK = {
    "en": "en-US", "ar": "ar-MA", "ca": "ca-ES", "cs": "cs-CZ", "da": "da-DK", "de": "de-DE", "el": "el-GR",
    "es": "es-ES", "fa": "fa-IR", "fr": "fr-FR", "hr": "hr-HR", "id": "id-ID", "it": "it-IT", "ja": "ja-JP",
    "ko": "ko-KR", "nb": "nb-NO", "nl": "nl-NL", "pl": "pl-PL", "pt": "pt-BR", "ro": "ro-RO", "ru": "ru-RU",
    "sv": "sv-SE", "tr": "tr-TR", "vi": "vi-VN", "zh": "zh-CN",
}
# gnome-user-docs directory names (usr/share/help/<dir>/)
GNOME = {
    "en": "C", "ca": "ca", "cs": "cs", "da": "da", "de": "de", "el": "el", "es": "es", "fa": "fa", "fi": "fi",
    "fr": "fr", "gl": "gl", "he": "he", "hi": "hi", "hr": "hr", "hu": "hu", "id": "id", "it": "it", "ja": "ja",
    "ko": "ko", "lt": "lt", "lv": "lv", "nl": "nl", "pl": "pl", "pt": "pt_BR", "ro": "ro", "ru": "ru", "sl": "sl",
    "sr": "sr", "sv": "sv", "ta": "ta", "te": "te", "tr": "tr", "uk": "uk", "vi": "vi", "zh": "zh_CN",
}
# libreoffice-help-<package suffix>, directory usr/share/libreoffice/help/<dir>/
LIBREOFFICE = {
    "en": ("en-us", "en-US"), "ca": ("ca", "ca"), "cs": ("cs", "cs"), "da": ("da", "da"), "de": ("de", "de"),
    "el": ("el", "el"), "es": ("es", "es"), "et": ("et", "et"), "eu": ("eu", "eu"), "fi": ("fi", "fi"),
    "fr": ("fr", "fr"), "gl": ("gl", "gl"), "hi": ("hi", "hi"), "hu": ("hu", "hu"), "id": ("id", "id"),
    "it": ("it", "it"), "ja": ("ja", "ja"), "km": ("km", "km"), "ko": ("ko", "ko"), "nl": ("nl", "nl"),
    "pl": ("pl", "pl"), "pt": ("pt-br", "pt-BR"), "ru": ("ru", "ru"), "sk": ("sk", "sk"), "sl": ("sl", "sl"),
    "sv": ("sv", "sv"), "tr": ("tr", "tr"), "vi": ("vi", "vi"), "zh": ("zh-cn", "zh-CN"),
}
# manpages(-<suffix>), pages under usr/share/man/<dir>/man?/ ("" = the English originals, usr/share/man/man?/)
MANPAGES = {
    "en": ("manpages", ""), "cs": ("manpages-cs", "cs"), "da": ("manpages-da", "da"), "de": ("manpages-de", "de"),
    "el": ("manpages-el", "el"), "es": ("manpages-es", "es"), "fi": ("manpages-fi", "fi"),
    "fr": ("manpages-fr", "fr"), "hu": ("manpages-hu", "hu"), "id": ("manpages-id", "id"),
    "it": ("manpages-it", "it"), "ja": ("manpages-ja", "ja"), "mk": ("manpages-mk", "mk"),
    "nb": ("manpages-nb", "nb"), "nl": ("manpages-nl", "nl"), "pl": ("manpages-pl", "pl"),
    "pt": ("manpages-pt-br", "pt_BR"), "ro": ("manpages-ro", "ro"), "ru": ("manpages-ru", "ru"),
    "sr": ("manpages-sr", "sr"), "sv": ("manpages-sv", "sv"), "tr": ("manpages-tr", "tr"),
    "uk": ("manpages-uk", "uk"), "vi": ("manpages-vi", "vi"), "zh": ("manpages-zh", "zh_CN"),
}
# languages the project knows beyond the sources above (the embedded Django/UDHR data)
EXTRA = ("th", "bn", "sw")

# language-ID labels (py3langid) accepted for a declared language: close relatives the model confuses on
# technical prose (Norwegian/Danish, the Serbo-Croatian standards, Arabic varieties, Chinese varieties)
LANGID_ALIASES = {
    "ar": {"ar", "ary", "arz"}, "zh": {"zh", "wuu", "yue"}, "nb": {"nb", "no", "nn", "da"},
    "da": {"da", "no", "nb"}, "hr": {"hr", "bs", "sr"}, "sr": {"sr", "hr", "bs"}, "id": {"id", "ms"},
    "fa": {"fa", "uzs"}, "gl": {"gl", "pt", "es"}, "ca": {"ca", "oc"}, "pt": {"pt", "gl"},
}


def known_languages() -> list[str]:
    return sorted({*HANDBOOK, *GNOME, *LIBREOFFICE, *MANPAGES, *EXTRA})


def check_languages(languages: list[str]) -> list[str]:
    """Refuse unknown or repeated codes with an error that names them and lists the known ones."""
    known = set(known_languages())
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise DataError(f"languages: unknown language code(s) {unknown}; known: {', '.join(sorted(known))}")
    if len(set(languages)) != len(languages):
        raise DataError(f"languages: repeated code in {languages}")
    if not languages:
        raise DataError("languages: empty list")
    return list(languages)


def langid_labels(lang: str) -> set[str]:
    return LANGID_ALIASES.get(lang, {lang})
