"""Turn an uploaded file into plain text for chunking.

The file type is decided by extension first and content sniffing second,
because uploads arrive with arbitrary names (``blob``, ``data.bin``) and
OpenAI's own behaviour is to index anything that is really text. Errors map
to the vector-store file's ``last_error.code``:

* ``UnsupportedFile`` -> ``unsupported_file``: binary content or a format we
  cannot read (images, archives, legacy .doc, ...).
* ``InvalidFile`` -> ``invalid_file``: a supported format that yields no text
  (empty, image-only PDF), is encrypted, or is corrupt.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from html.parser import HTMLParser
from pathlib import PurePosixPath
from xml.etree import ElementTree

__all__ = ["InvalidFile", "UnsupportedFile", "check_zip_bounds", "extract_text"]


class UnsupportedFile(Exception):
    """Binary or unknown content that cannot be indexed."""


class InvalidFile(Exception):
    """A readable type whose content is empty, encrypted or corrupt."""


TEXT_EXTENSIONS = frozenset(
    [
        "txt",
        "text",
        "md",
        "markdown",
        "mdx",
        "rst",
        "adoc",
        "asciidoc",
        "org",
        "tex",
        "log",
        "ini",
        "cfg",
        "conf",
        "toml",
        "yaml",
        "yml",
        "env",
        "properties",
        "py",
        "pyi",
        "js",
        "mjs",
        "cjs",
        "jsx",
        "ts",
        "tsx",
        "go",
        "rs",
        "java",
        "kt",
        "kts",
        "scala",
        "c",
        "h",
        "cc",
        "cpp",
        "cxx",
        "hpp",
        "hh",
        "cs",
        "rb",
        "php",
        "pl",
        "pm",
        "sh",
        "bash",
        "zsh",
        "fish",
        "ps1",
        "bat",
        "sql",
        "r",
        "swift",
        "m",
        "mm",
        "lua",
        "dart",
        "ex",
        "exs",
        "erl",
        "hrl",
        "hs",
        "ml",
        "mli",
        "clj",
        "cljs",
        "el",
        "vim",
        "css",
        "scss",
        "sass",
        "less",
        "vue",
        "svelte",
        "graphql",
        "gql",
        "proto",
        "xml",
        "svg",
        "tsv",
        "dockerfile",
        "makefile",
        "gradle",
        "cmake",
    ]
)
HTML_EXTENSIONS = frozenset({"html", "htm", "xhtml"})
JSON_EXTENSIONS = frozenset({"json", "jsonl", "ndjson", "geojson", "ipynb"})
CSV_EXTENSIONS = frozenset({"csv"})
BINARY_EXTENSIONS = frozenset(
    [
        "png",
        "jpg",
        "jpeg",
        "gif",
        "bmp",
        "tif",
        "tiff",
        "webp",
        "ico",
        "heic",
        "psd",
        "mp3",
        "wav",
        "flac",
        "ogg",
        "m4a",
        "mp4",
        "mov",
        "avi",
        "mkv",
        "webm",
        "zip",
        "gz",
        "tgz",
        "bz2",
        "xz",
        "7z",
        "rar",
        "tar",
        "zst",
        "exe",
        "dll",
        "so",
        "dylib",
        "bin",
        "o",
        "a",
        "class",
        "jar",
        "whl",
        "pyc",
        "wasm",
        "doc",
        "xls",
        "ppt",
        "xlsx",
        "odt",
        "ods",
        "odp",
        "sqlite",
        "db",
        "parquet",
        "arrow",
        "feather",
        "npy",
        "npz",
        "pkl",
        "pt",
        "safetensors",
        "ttf",
        "otf",
        "woff",
        "woff2",
        "iso",
        "dmg",
    ]
)

_NAMED_TEXT_FILES = frozenset({"dockerfile", "makefile", "readme", "license", "changelog", "gemfile", "rakefile"})


def _extension(filename: str) -> str:
    name = PurePosixPath(filename.replace("\\", "/")).name.lower()
    if name in _NAMED_TEXT_FILES:
        return "txt"
    return name.rsplit(".", 1)[1] if "." in name else ""


def _non_empty(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if not text.strip():
        raise InvalidFile("the file contains no text")
    return text


# ---------------------------------------------------------------- plain text


def _looks_binary(sample: bytes) -> bool:
    """Heuristic of ``file``/git: NUL bytes or many control characters."""
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return control / len(sample) > 0.05


def _decode_text(data: bytes) -> str:
    """Decode text bytes, or raise ``UnsupportedFile`` if they are binary.

    BOMs win; then UTF-8; then, for bytes that pass the binary check,
    cp1252 (a superset of latin-1 for printable text, the usual legacy
    encoding of Western text files)."""
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise InvalidFile(f"text with a {encoding} byte-order mark does not decode") from exc
    if _looks_binary(data[:8192]):
        raise UnsupportedFile("the file is binary, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
        if text.count("\ufffd") > max(8, len(text) // 100):
            raise UnsupportedFile("the file is not text in a known encoding") from None
    control = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\t\n\f\r\x1b")
    if control > len(text[:8192]) * 0.05:
        raise UnsupportedFile("the file is binary, not text")
    return text


# ---------------------------------------------------------------- HTML


class _HTMLText(HTMLParser):
    """Text of an HTML page: scripts, styles and the like dropped, block
    elements on their own lines so sentences do not run together."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object"})
    _BLOCK = frozenset(
        [
            "p",
            "div",
            "br",
            "hr",
            "li",
            "ul",
            "ol",
            "dl",
            "dt",
            "dd",
            "tr",
            "table",
            "thead",
            "tbody",
            "section",
            "article",
            "header",
            "footer",
            "nav",
            "aside",
            "main",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "pre",
            "blockquote",
            "figure",
            "figcaption",
            "form",
            "fieldset",
            "title",
            "address",
            "details",
            "summary",
        ]
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in self._SKIP and tag != "head":
            self._skip_depth += 1
        if tag in self._BLOCK:
            self.parts.append("\n")
        if tag in ("td", "th"):
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self._SKIP and tag != "head" and self._skip_depth:
            self._skip_depth -= 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if not self._skip_depth:
            self.parts.append(data)

    def text(self) -> str:
        raw = "".join(self.parts)
        lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in raw.split("\n")]
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        title = self.title.strip()
        return f"{title}\n\n{body}" if title and body else title or body


def _html_to_text(data: bytes) -> str:
    text = _decode_text(data)
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    return parser.text()


# ---------------------------------------------------------------- JSON / CSV


def _json_to_text(data: bytes) -> str:
    """Valid JSON is re-serialised with indentation and real Unicode
    (``\\u00e9`` escapes would hide words from keyword search); JSON Lines
    are accepted line by line. Unparseable JSON is a corrupt file."""
    text = _decode_text(data)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except json.JSONDecodeError:
        pass
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return "\n".join(json.dumps(json.loads(line), ensure_ascii=False) for line in lines)
    except json.JSONDecodeError as exc:
        raise InvalidFile(f"invalid JSON: {exc}") from exc


def _csv_to_text(data: bytes) -> str:
    """CSV stays CSV (the model reads it well); it is only checked to parse."""
    text = _decode_text(data)
    try:
        for _ in csv.reader(io.StringIO(text)):
            pass
    except csv.Error as exc:
        raise InvalidFile(f"invalid CSV: {exc}") from exc
    return text


# ---------------------------------------------------------------- PDF


def _pdf_to_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Owner-password-only PDFs open with the empty user password;
            # anything needing a password cannot be indexed.
            try:
                opened = reader.decrypt("")
            except Exception as exc:  # missing crypto backend, bad key, ...
                raise InvalidFile("the PDF is encrypted") from exc
            if not opened:
                raise InvalidFile("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise InvalidFile(f"the PDF could not be read: {exc}") from exc
    return "\n\n".join(p.strip() for p in pages if p.strip())


# ---------------------------------------------------------------- Office


_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def _docx_to_text(data: bytes) -> str:
    if data.startswith(_OLE_MAGIC):
        # A .docx in an OLE container is a password-protected document.
        raise InvalidFile("the document is encrypted")
    from docx import Document

    try:
        doc = Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises many types for bad zips/XML
        raise InvalidFile(f"the DOCX could not be read: {exc}") from exc
    parts: list[str] = [p.text for p in doc.paragraphs]
    for table in doc.tables:
        for row in table.rows:
            parts.append("\t".join(cell.text for cell in row.cells))
    return "\n".join(parts)


_A_NS = "{http://schemas.openxmlformats.org/drawingml/2006/main}"


def _pptx_to_text(data: bytes) -> str:
    """Slide text runs from the zip, stdlib only (python-pptx is not needed
    for plain text)."""
    if data.startswith(_OLE_MAGIC):
        raise InvalidFile("the presentation is encrypted")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = [n for n in zf.namelist() if re.fullmatch(r"ppt/slides/slide\d+\.xml", n)]
            names.sort(key=lambda n: int(re.findall(r"\d+", n)[-1]))
            slides: list[str] = []
            for name in names:
                root = ElementTree.fromstring(zf.read(name))
                paragraphs = ["".join(t.text or "" for t in para.iter(f"{_A_NS}t")) for para in root.iter(f"{_A_NS}p")]
                slides.append("\n".join(p for p in paragraphs if p.strip()))
    except (zipfile.BadZipFile, ElementTree.ParseError, KeyError, ValueError) as exc:
        raise InvalidFile(f"the PPTX could not be read: {exc}") from exc
    return "\n\n".join(slides)


MAX_INFLATED_MEMBER_BYTES = 64 << 20
MAX_INFLATED_FILE_BYTES = 256 << 20
MAX_ZIP_MEMBERS = 10_000


def check_zip_bounds(
    data: bytes, member_cap: int = MAX_INFLATED_MEMBER_BYTES, total_cap: int = MAX_INFLATED_FILE_BYTES
) -> None:
    """Refuse a zip (docx, pptx, ...) that would inflate past the caps, before inflating any of it.

    The central directory declares each member's size, and Python's zipfile never yields
    more than that size from a member, so checking the declarations bounds what every
    later read (ours, python-docx's) can inflate: a 1.5 MB file whose slide inflates to
    1.5 GB is refused here without reading the slide.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise InvalidFile(f"the file is not a valid zip container: {exc}") from exc
    if len(members) > MAX_ZIP_MEMBERS:
        raise InvalidFile(f"the file holds {len(members)} parts; at most {MAX_ZIP_MEMBERS} are read")
    total = 0
    for info in members:
        if info.file_size > member_cap:
            raise InvalidFile(
                f"part '{info.filename[:100]}' inflates to {info.file_size} bytes; at most {member_cap} are read"
            )
        total += info.file_size
        if total > total_cap:
            raise InvalidFile(f"the file inflates to more than {total_cap} bytes; at most that much is read")


def _zip_kind(data: bytes) -> str | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
    except zipfile.BadZipFile:
        return None
    if "word/document.xml" in names:
        return "docx"
    if any(n.startswith("ppt/slides/") for n in names):
        return "pptx"
    return "zip"


# ---------------------------------------------------------------- dispatch


def extract_text(filename: str, data: bytes) -> str:
    """Plain text of ``data``; raises ``UnsupportedFile`` or ``InvalidFile``."""
    if not data or not data.strip():
        raise InvalidFile("the file is empty")
    ext = _extension(filename)
    is_pdf = data[:1024].lstrip().startswith(b"%PDF-")
    if ext == "pdf" or is_pdf:
        if not is_pdf:
            raise InvalidFile("the file has a .pdf name but is not a PDF")
        return _non_empty(_pdf_to_text(data))
    is_zip = data.startswith(b"PK\x03\x04")
    if ext in ("docx", "pptx") or is_zip:
        if is_zip:
            check_zip_bounds(data)
        kind = _zip_kind(data) if is_zip else None
        if kind == "docx" or (ext == "docx" and kind is None):
            return _non_empty(_docx_to_text(data))
        if kind == "pptx" or (ext == "pptx" and kind is None):
            return _non_empty(_pptx_to_text(data))
        raise UnsupportedFile("archives are not supported")
    if ext in BINARY_EXTENSIONS:
        raise UnsupportedFile(f".{ext} files are not supported")
    if ext in HTML_EXTENSIONS:
        return _non_empty(_html_to_text(data))
    if ext in JSON_EXTENSIONS:
        return _non_empty(_json_to_text(data))
    if ext in CSV_EXTENSIONS:
        return _non_empty(_csv_to_text(data))
    text = _decode_text(data)
    if not ext and re.match(r"\s*(<!doctype html|<html)", text[:512], re.IGNORECASE):
        parser = _HTMLText()
        parser.feed(text)
        parser.close()
        return _non_empty(parser.text())
    return _non_empty(text)
