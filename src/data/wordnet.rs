//! A reader for the WordNet 3.0 database files (`data.noun`, `data.verb`, `data.adj`,
//! `data.adv` and `cntlist.rev`, as Princeton distributes them and Debian's `wordnet-base`
//! installs them under `/usr/share/wordnet`).
//!
//! A data line is `offset lex_filenum ss_type w_cnt (word lex_id)×w_cnt p_cnt
//! (pointer_symbol offset pos source/target)×p_cnt [frames] | gloss`, with `w_cnt` in
//! hexadecimal; lines starting with two spaces are the license header. `cntlist.rev` gives,
//! per sense key `lemma%ss_type:lex_filenum:lex_id::`, how often the sense was tagged in the
//! Semantic Concordance: the measure of a word sense's commonness used here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A part of speech.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pos {
    /// Nouns (`n`).
    Noun,
    /// Verbs (`v`).
    Verb,
    /// Adjectives (`a`, and satellites `s`).
    Adjective,
    /// Adverbs (`r`).
    Adverb,
}

impl Pos {
    /// Every part of speech with the name of its data file.
    pub const ALL: [(Pos, &'static str); 4] = [
        (Pos::Noun, "data.noun"),
        (Pos::Verb, "data.verb"),
        (Pos::Adjective, "data.adj"),
        (Pos::Adverb, "data.adv"),
    ];

    fn from_code(code: &str) -> Option<Pos> {
        Some(match code {
            "n" => Pos::Noun,
            "v" => Pos::Verb,
            "a" | "s" => Pos::Adjective,
            "r" => Pos::Adverb,
            _ => return None,
        })
    }

    /// The `ss_type` digit of sense keys.
    fn sense_key_type(self, satellite: bool) -> u8 {
        match self {
            Pos::Noun => 1,
            Pos::Verb => 2,
            Pos::Adjective if satellite => 5,
            Pos::Adjective => 3,
            Pos::Adverb => 4,
        }
    }
}

/// The 45 lexicographer files, by number (`lexnames` of WordNet 3.0).
pub const LEXNAMES: [&str; 45] = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
];

/// One synset (set of synonyms) of a data file.
#[derive(Clone, Debug, PartialEq)]
pub struct Synset {
    /// Byte offset of its line in the data file: its identifier within the part of speech.
    pub offset: u32,
    /// Part of speech.
    pub pos: Pos,
    /// An adjective satellite (`s`).
    pub satellite: bool,
    /// Lexicographer file number (index into [`LEXNAMES`]).
    pub lex_filenum: u8,
    /// Its words (underscores for spaces, as in the file) with their lexical ids.
    pub words: Vec<(String, u8)>,
    /// Offsets of its hypernyms (`@`) and instance hypernyms (`@i`), same part of speech.
    pub hypernyms: Vec<u32>,
    /// The gloss: definition, then examples in double quotes, separated by `; `.
    pub gloss: String,
}

impl Synset {
    /// The definition: the gloss before its first quoted example.
    pub fn definition(&self) -> &str {
        let end = self.gloss.find("; \"").unwrap_or(self.gloss.len());
        self.gloss[..end].trim().trim_end_matches(';').trim()
    }

    /// The lexicographer file's name (`noun.animal`, ...).
    pub fn lexname(&self) -> &'static str {
        LEXNAMES
            .get(self.lex_filenum as usize)
            .copied()
            .unwrap_or("unknown")
    }

    /// The sense key of its `i`-th word (`dog%1:05:00::`; satellites' head words are not
    /// resolved, so their keys end in `:` with an empty head).
    pub fn sense_key(&self, i: usize) -> Option<String> {
        let (word, lex_id) = self.words.get(i)?;
        let lemma = word.to_lowercase();
        // Adjective markers such as `(a)` are not part of the lemma.
        let lemma = lemma.split('(').next().unwrap_or(&lemma);
        Some(format!(
            "{lemma}%{}:{:02}:{lex_id:02}::",
            self.pos.sense_key_type(self.satellite),
            self.lex_filenum
        ))
    }
}

/// Parses one synset line of a data file; `None` for the license header's lines.
pub fn parse_data_line(line: &str) -> std::result::Result<Option<Synset>, String> {
    if line.starts_with("  ") || line.trim().is_empty() {
        return Ok(None);
    }
    let (head, gloss) = match line.split_once(" | ") {
        Some((h, g)) => (h, g.trim_end()),
        None => (line.trim_end(), ""),
    };
    let mut fields = head.split_ascii_whitespace();
    let mut next = |what: &str| {
        fields
            .next()
            .ok_or_else(|| format!("the line ends before its {what}"))
    };
    let offset: u32 = next("offset")?
        .parse()
        .map_err(|_| "the offset is not a number".to_string())?;
    let lex_filenum: u8 = next("lex_filenum")?
        .parse()
        .map_err(|_| "lex_filenum is not a number".to_string())?;
    let ss_type = next("ss_type")?;
    let pos = Pos::from_code(ss_type).ok_or_else(|| format!("unknown ss_type `{ss_type}`"))?;
    let w_cnt = usize::from_str_radix(next("w_cnt")?, 16)
        .map_err(|_| "w_cnt is not a hexadecimal number".to_string())?;
    let mut words = Vec::with_capacity(w_cnt);
    for _ in 0..w_cnt {
        let word = next("word")?.to_string();
        let lex_id = u8::from_str_radix(next("lex_id")?, 16)
            .map_err(|_| format!("the lex_id of `{word}` is not hexadecimal"))?;
        words.push((word, lex_id));
    }
    let p_cnt: usize = next("p_cnt")?
        .parse()
        .map_err(|_| "p_cnt is not a number".to_string())?;
    let mut hypernyms = Vec::new();
    for _ in 0..p_cnt {
        let symbol = next("pointer symbol")?;
        let target: u32 = next("pointer offset")?
            .parse()
            .map_err(|_| "a pointer offset is not a number".to_string())?;
        let target_pos = next("pointer part of speech")?;
        next("pointer source/target")?;
        if (symbol == "@" || symbol == "@i") && Pos::from_code(target_pos) == Some(pos) {
            hypernyms.push(target);
        }
    }
    Ok(Some(Synset {
        offset,
        pos,
        satellite: ss_type == "s",
        lex_filenum,
        words,
        hypernyms,
        gloss: gloss.to_string(),
    }))
}

/// Parses `cntlist.rev` text: sense key → tag count.
pub fn parse_counts(text: &str, path: &Path) -> Result<HashMap<String, u32>> {
    let mut counts = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let mut f = line.split_ascii_whitespace();
        let (Some(key), Some(_sense), Some(count)) = (f.next(), f.next(), f.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(Error::file(
                path,
                format!("line {}: expected `sense_key sense_number tag_cnt`", i + 1),
            ));
        };
        let count: u32 = count.parse().map_err(|_| {
            Error::file(
                path,
                format!("line {}: tag count `{count}` is not a number", i + 1),
            )
        })?;
        counts.insert(key.to_string(), count);
    }
    Ok(counts)
}

/// The database: every synset of the parts of speech read, and the sense counts.
#[derive(Clone, Debug, Default)]
pub struct WordNet {
    synsets: HashMap<(Pos, u32), Synset>,
    counts: HashMap<String, u32>,
}

impl WordNet {
    /// Reads the data files of `parts` and `cntlist.rev` from `dir` (e.g.
    /// `/usr/share/wordnet`). An error names the file and line.
    pub fn load(dir: &Path, parts: &[Pos]) -> Result<Self> {
        let mut synsets = HashMap::new();
        for (pos, name) in Pos::ALL.iter().filter(|(p, _)| parts.contains(p)) {
            let path: PathBuf = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::file(
                    &path,
                    format!("{e} (WordNet 3.0's dict folder, e.g. Debian's wordnet-base)"),
                )
            })?;
            for (i, line) in text.lines().enumerate() {
                let synset = parse_data_line(line)
                    .map_err(|m| Error::file(&path, format!("line {}: {m}", i + 1)))?;
                if let Some(s) = synset {
                    synsets.insert((*pos, s.offset), s);
                }
            }
        }
        let counts_path = dir.join("cntlist.rev");
        let text =
            std::fs::read_to_string(&counts_path).map_err(|e| Error::file(&counts_path, e))?;
        Ok(Self {
            synsets,
            counts: parse_counts(&text, &counts_path)?,
        })
    }

    /// A database from parsed parts (tests, other sources).
    pub fn from_parts(synsets: Vec<Synset>, counts: HashMap<String, u32>) -> Self {
        Self {
            synsets: synsets
                .into_iter()
                .map(|s| ((s.pos, s.offset), s))
                .collect(),
            counts,
        }
    }

    /// The synset at `offset` of `pos`.
    pub fn synset(&self, pos: Pos, offset: u32) -> Option<&Synset> {
        self.synsets.get(&(pos, offset))
    }

    /// Every synset of `pos`, by offset.
    pub fn synsets(&self, pos: Pos) -> Vec<&Synset> {
        let mut out: Vec<&Synset> = self.synsets.values().filter(|s| s.pos == pos).collect();
        out.sort_by_key(|s| s.offset);
        out
    }

    /// How often the `i`-th word of `synset` was tagged with this sense (0 if never).
    pub fn sense_count(&self, synset: &Synset, i: usize) -> u32 {
        synset
            .sense_key(i)
            .and_then(|k| self.counts.get(&k).copied())
            .unwrap_or(0)
    }

    /// Every hypernym of `synset`, transitively (nearest first, each once).
    pub fn ancestors(&self, synset: &Synset) -> Vec<&Synset> {
        let mut out: Vec<&Synset> = Vec::new();
        let mut frontier: Vec<u32> = synset.hypernyms.clone();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for offset in frontier {
                if let Some(s) = self.synset(synset.pos, offset) {
                    if !out.iter().any(|o| o.offset == s.offset) {
                        out.push(s);
                        next.extend(s.hypernyms.iter().copied());
                    }
                }
            }
            frontier = next;
        }
        out
    }
}
