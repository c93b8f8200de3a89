"""The contact's language, guessed from what they write, when no one has told us.

lingua (offline, models inside the wheel) is built for short texts, which WhatsApp messages
are. It is restricted to the languages an installation expects: every extra candidate is one
more way for "ok" or "bom dia" to be misread. Short texts are still ambiguous ("d'accord",
"pode mandar a nota fiscal" sit between two or three languages), so the phone's country code
acts as a prior: when a language of that country scores within ``margin`` of the best one,
it wins. A clear result is never overruled, so an expat writing English from Riyadh stays
English.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lingua import IsoCode639_1, LanguageDetectorBuilder
from lingua import LanguageDetector as _Lingua

from wacrm.rules.events import country_of

DEFAULT_LANGUAGES = ("ar", "en", "zh", "es", "pt", "hi", "id", "fr", "de", "it", "ru", "tr")
DEFAULT_MARGIN = 0.2
_MIN_LETTERS = 2

_PRIORS = (
    ("ar", "SA AE EG MA DZ TN IQ JO KW QA BH OM LB SY YE LY SD PS MR"),
    ("en", "GB AU NZ IE NG GH KE ZA UG JM ZW PK PH"),
    ("en es", "US"),
    ("en fr", "CA"),
    ("hi en", "IN"),
    ("en zh", "SG MY"),
    ("zh", "CN TW HK MO"),
    ("es", "ES MX AR CO CL PE VE EC GT CU BO DO HN PY SV NI CR PA UY PR"),
    ("pt", "BR PT AO MZ CV GW ST TL"),
    ("id", "ID"),
    ("fr", "FR BE SN CI CM CD CG ML BF NE MG HT GA BJ TG GN MC LU"),
    ("de fr it", "CH"),
    ("de", "DE AT LI"),
    ("it", "IT SM"),
    ("ru", "RU BY KZ KG"),
    ("tr", "TR"),
)
# The languages people mostly write in, per country (ISO 3166 → ISO 639-1), most common first.
# A prior only, consulted when the text itself is ambiguous; countries not listed get none.
COUNTRY_LANGUAGES: Mapping[str, tuple[str, ...]] = {
    country: tuple(langs.split()) for langs, countries in _PRIORS for country in countries.split()
}


SURE_CONFIDENCE = 0.5


@dataclass(frozen=True, slots=True)
class Detection:
    language: str  # ISO 639-1
    confidence: float  # lingua's relative confidence of the chosen language
    by_prior: bool  # chosen over a slightly higher score because of the country
    country_language: bool = False  # a language people in the phone's country write

    @property
    def sure(self) -> bool:
        """Good enough to store on the contact: a clear score, or the country agrees.
        ("ok" reads as Turkish at 0.39; stored for a US number, it would stay wrong.)"""
        return self.confidence >= SURE_CONFIDENCE or self.by_prior or self.country_language


class LanguageDetector:
    """Build once (lingua loads its models on first use: about a second for a dozen
    languages; call :meth:`warm_up` at start-up), then share; detection is thread-safe."""

    def __init__(
        self, languages: Sequence[str] = DEFAULT_LANGUAGES, *, margin: float = DEFAULT_MARGIN
    ) -> None:
        codes = []
        for code in dict.fromkeys(languages):
            try:
                codes.append(IsoCode639_1.from_str(code))
            except ValueError:
                reason = f"unknown language code {code!r} (use ISO 639-1, e.g. ar)"
                raise ValueError(reason) from None
        if len(codes) < 2:
            raise ValueError("language detection needs at least two languages to choose from")
        self.languages = tuple(c.name.lower() for c in codes)
        self.margin = margin
        self._codes = codes
        self._lingua: _Lingua | None = None

    def _detector(self, preload: bool = False) -> _Lingua:
        if self._lingua is None:
            builder = LanguageDetectorBuilder.from_iso_codes_639_1(*self._codes)
            self._lingua = (
                builder.with_preloaded_language_models() if preload else builder
            ).build()
        return self._lingua

    @property
    def loaded(self) -> bool:
        """True once the models are in memory (after :meth:`warm_up` or a first detection)."""
        return self._lingua is not None

    def warm_up(self) -> None:
        """Load every model now rather than on the first customer's message in a script."""
        self._detector(preload=True)

    def detect(self, texts: str | Iterable[str], phone: str | None = None) -> Detection | None:
        """The language of ``texts`` (one message, or a few recent ones read together);
        None when they hold too few letters to tell (emoji, numbers, "?")."""
        text = texts if isinstance(texts, str) else "\n".join(t for t in texts if t)
        if sum(c.isalpha() for c in text) < _MIN_LETTERS:
            return None
        scores = [
            (v.language.iso_code_639_1.name.lower(), v.value)
            for v in self._detector().compute_language_confidence_values(text)
        ]
        if not scores or scores[0][1] <= 0:
            return None
        best, best_score = scores[0]
        country = country_of(phone)
        preferred = set(COUNTRY_LANGUAGES.get(country, ())) if country else set()
        if best not in preferred:
            for lang, score in scores[1:]:
                if lang in preferred and score > 0 and best_score - score <= self.margin:
                    return Detection(lang, score, by_prior=True, country_language=True)
        return Detection(best, best_score, by_prior=False, country_language=best in preferred)
