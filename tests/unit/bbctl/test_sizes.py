import pytest

from bbctl.collection import sizes


@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0),
    ("100", 100),
    ("1K", 1024),
    ("1KiB", 1024),
    ("1KB", 1000),
    ("4GiB", 4 * 1024**3),
    ("4gib", 4 * 1024**3),
    ("2T", 2 * 1024**4),
    ("3PB", 3 * 1000**5),
    ("1.5G", 3 * 512 * 1024**2),
    ("10B", 10),
    (4096, 4096),
])
def test_parse_size_units(text, expected):
    assert sizes.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "1X", "1 GiBs", "1e3", "1,5G", "1.5.2G"])
def test_parse_size_rejects_and_names_the_text(text):
    with pytest.raises(sizes.SizeError, match="cannot read size"):
        sizes.parse_size(text)


def test_parse_size_rejects_negative_int():
    with pytest.raises(sizes.SizeError, match="negative"):
        sizes.parse_size(-5)


@pytest.mark.parametrize(("nbytes", "text"), [
    (4 * 1024**3, "4GiB"), (1536 * 1024**2, "1536MiB"), (1024, "1KiB"), (1500, "1500"), (0, "0"),
])
def test_format_size_round_trips(nbytes, text):
    assert sizes.format_size(nbytes) == text
    assert sizes.parse_size(text) == nbytes


def test_describe_size_reads_as_people_write_sizes():
    assert [sizes.describe_size(n) for n in (0, 1023, 1536, 3 * 2**20 + 2**19, 5 * 2**40, 3 * 2**50)] == [
        "0 B", "1023 B", "1.5 KiB", "3.5 MiB", "5.0 TiB", "3.0 PiB"]
