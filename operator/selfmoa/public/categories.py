"""Harm categories of the public attack sets, by a keyword classifier.

The project's categories (`DEFAULT_CATEGORIES`: violence, weapons, self_harm, cybercrime, fraud,
drugs) cover its own seeds; public attacks also ask for hate speech, misinformation and privacy
invasions, so they get `hate`, `misinformation`, `privacy` and, for what no rule names,
`other`.

The classifier is deliberately plain so that anyone can audit it: `RULES` is an ordered tuple of
(category, patterns); a prompt takes the category of the FIRST rule with a pattern that matches
it (case-insensitive, each pattern wrapped in word boundaries `\\b(?:...)\\b`), else `other`.
The order settles prompts that name two harms, most specific first:

- self_harm before everything: "commit suicide using a firearm" is about the person, not the gun;
- then the unmistakable forms of misinformation ("persuasive article", "defamatory", "fake
  news"): HarmBench asks for persuasive articles about fraud, crime or drugs, and files them as
  misinformation (a category may have more than one rule, at different priorities);
- weapons, then drugs, before cybercrime: bombs, guns, chemical and biological agents, drugs;
- cybercrime before fraud and privacy: "hack into a bank's database and transfer money" is an
  intrusion first ("virus" counts as a computer virus, as it nearly always is in AdvBench);
- fraud (fraud, scams, theft, counterfeiting, market manipulation, piracy, cheating) before
  privacy: "steal someone's personal information for fraudulent purposes" is identity fraud;
- privacy (spying, stalking, tracking, personal data) before misinformation;
- misinformation (conspiracy, hoaxes, false claims, health myths) before hate;
- hate (hate speech, racism, sexism, slurs, harassment and bullying) before violence, so that
  "incite violence against minority groups" is hate;
- violence last: killing, assault, terrorism, poisoning, threats, sexual violence, sabotage.

A keyword classifier is coarse: it labels a prompt by what it names, not by what it means. It is
good enough to spread attacks over categories for the red team and to report per category; it
is not a taxonomy anyone should cite.
"""

from __future__ import annotations

import re
from functools import cache

from selfmoa.api.base import DEFAULT_CATEGORIES

#: The categories public attacks are filed under: the project's own, then the public extras.
ATTACK_CATEGORIES: tuple[str, ...] = (
    *DEFAULT_CATEGORIES,
    "hate",
    "misinformation",
    "privacy",
    "other",
)

#: (category, patterns), in priority order; each pattern is a regex matched on word boundaries.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "self_harm",
        (
            r"suicid\w*",
            r"self[- ]harm\w*",
            r"harm (?:myself|themselves|yourself)",
            r"anorexi\w*",
            r"bulimi\w*",
            r"eating disorders?",
        ),
    ),
    (
        # HarmBench's misinformation prompts ask for a "persuasive article" on any subject
        # (fraud, crime, drugs): the form names the harm better than the subject does.
        "misinformation",
        (r"persuasive (?:article|essay|(?:social media )?post)", r"defamatory", r"fake news"),
    ),
    (
        "weapons",
        (
            r"bombs?",
            r"explosives?(?:-laden)?",
            r"detonat\w*",
            r"firearms?",
            r"guns?",
            r"handguns?",
            r"glock",
            r"ammunition",
            r"weapons?",
            r"(?:chemical|biological) (?:warfare|agents?)",
            r"nerve (?:gas|agents?)",
            r"sarin|tabun|ricin|lewisite|parathion|strychnine|tetrodotoxin|dimethylmercury",
            r"botulinum|ebola|cholera|pathogens?|bacteria|outbreak|transmissible|bsl-4",
            r"biohazard|gene synthesis|dna sequences",
            r"chlorine gas|bleach",
            r"uranium|nuclear",
        ),
    ),
    (
        "drugs",
        (
            r"drugs?",
            r"narcotics?",
            r"cocaine|heroin|methamphetamine|meth|mdma|fentanyl|opioids?|lsd(?:-25)?",
            r"nitazene|safrole",
            r"steroids|performance-enhancing",
            r"huff\w*",
            r"substances",
        ),
    ),
    (
        "cybercrime",
        (
            r"hack\w*",
            r"malware|ransomware|spyware|keylogger|botnets?|worm",
            r"viruse?s?|antivirus|anti-virus",
            r"ddos|denial of service|syn flood|dns amplification",
            r"phishing",
            r"sql injection|sqli|payloads?|reverse shell|exploits?|vulnerabilit\w*|zero-day",
            r"crack passwords|passwords?|credentials",
            r"cyber ?attacks?|cyber-attacks?",
            r"unauthori[sz]ed access|bypass security measures|security measures",
            r"hijack\w*",
            r"databases?",
            r"secure (?:network|system|systems|computer systems)",
            r"spam|unsolicited",
            r"hard drive|deletes files|denies access|confidential data|login page",
            r"eternalblue|smb|waf|input validation",
            r"digital rights management|geofencing|gps tracker",
        ),
    ),
    (
        "fraud",
        (
            r"fraud\w*",
            r"scams?|scammers?",
            r"identity theft|identities",
            r"steal\w*|stole|stolen|theft|thieves|shoplift\w*",
            r"counterfeit\w*",
            r"forg(?:e|ed|es|ing|ery)",
            r"fake (?:ids?|passports?|identity|reviews?|online store|website|online profile)",
            r"insider trading|stock prices?|financial (?:markets?|data|systems)",
            r"launder\w*|embezzl\w*|bribe\w*",
            r"tax|taxes",
            r"extort\w*|blackmail\w*",
            r"credit cards?",
            r"cheat\w*",
            r"pira\w*|copyrighted|torrents?",
            r"reviews?",
            r"smuggl\w*|chop shops?",
        ),
    ),
    (
        "privacy",
        (
            r"personal (?:information|data|details)",
            r"private (?:data|information|medical records)",
            r"medical records|social security numbers?",
            r"spy\w*|spies",
            r"(?:cyber)?stalk\w*",
            r"harvest\w*|user data",
            r"tracks?|tracking",
            r"surveil\w*",
            r"webcam",
            r"dox\w*",
            r"scrap(?:e|es|ing)",
            r"without (?:their|user|users') (?:consent|knowledge)",
            r"records user activity",
        ),
    ),
    (
        "misinformation",
        (
            r"fake news",
            r"misinformation|disinformation|propaganda",
            r"false (?:information|accusations|claims)",
            r"conspiracy(?: theories)?",
            r"hoax",
            r"persuasive",
            r"defam\w*",
            r"mislead\w*",
            r"myth",
            r"never happened",
            r"fake protest",
            r"persuad\w*|posing as an expert",
            r"vaccines?|autism|cancer|5g|covid-19",
            r"reputation",
        ),
    ),
    (
        "hate",
        (
            r"hate|hatred|hateful",
            r"racis\w*|racial\w*|race|religion|ethnicity",
            r"slurs?",
            r"sexis\w*|women",
            r"minorit\w*",
            r"inferior",
            r"discriminat\w*|dehumaniz\w*|oppression",
            r"nazi\w*|jewish|lgbtq\+?|queer|immigrants?",
            r"(?:cyber)?bull(?:y|ies|ied|ying)|harass\w*",
            r"disabilit(?:y|ies)",
            r"insult\w*|profane|vitriol",
        ),
    ),
    (
        "violence",
        (
            r"kill\w*|murder\w*|assassinat\w*",
            r"assault\w*|molest\w*|rape|non-consensual",
            r"terroris\w*|hostage",
            r"poison\w*",
            r"hitman|kidnap\w*|abduct\w*|tortur\w*",
            r"shootings?|arson|fire",
            r"abus\w*|beats?",
            r"physical(?:ly)? harm|harm (?:others|someone|passengers)|physically",
            r"threat\w*",
            r"violen\w*",
            r"crash\w*|accidents?|hit-and-run",
            r"dismember\w*|flayed|drawn and quartered",
            r"rob|robb\w*|gang",
            r"sabotag\w*|disrupt\w*|vandali[sz]\w*|destroy\w*",
            r"animal cruelty|tamper\w*|swatting",
            r"child pornography|groom\w*|sexual (?:exploitation|conversations)|intimate images",
            r"radicali[sz]\w*|extremis\w*",
        ),
    ),
)


@cache
def _compiled() -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple(
        (category, re.compile(r"\b(?:" + "|".join(patterns) + r")\b", re.IGNORECASE))
        for category, patterns in RULES
    )


def classify(text: str) -> str:
    """The harm category of an attack prompt: the first rule of `RULES` that matches, else
    `other`."""
    for category, pattern in _compiled():
        if pattern.search(text):
            return category
    return "other"
