"""Explicit randomness: every draw is a function of a seed, never of a global generator.

Batch element b of a run is (scenario point, replica r). Quenched disorder is drawn from
streams of its own, shared by all replicas: projections, W_O and ffn weights from the
disorder stream (one per replica when ``Rollout.create(..., disorder_per_replica=True)``),
fields h from the field stream, trade networks from the network stream, initial conditions
from the initial stream of (seed, r); these use NumPy and torch generators seeded by
:func:`derive_seed`.

The draws made during rounds (sampled mode) are counter-based: element b carries a 64-bit
key, :func:`dynamics_key` of (run seed, r), in ``State.random_keys``, and every number it
uses is a hash of

    (element key, round, agent, stream, index)

computed with 64-bit integer arithmetic in torch (:func:`mix64`, the SplitMix64 finaliser),
so that a draw depends on nothing else: not on the block size, the batch layout, the number
of attempts a sampler makes at once, nor the device (integer arithmetic is exact
everywhere). Sweep points with the same replica index share their random numbers (common
random numbers make differences between points less noisy).

The hash is applied level by level, each level a keyed bijection
``key' = mix64(key ^ mix64(tag + value))``: element key -> key of (element, round) -> key of
(element, round, agent) -> one 64-bit word per (stream, index). The top 52 bits of the word
give a uniform on the open interval (0, 1): (m + 1/2) 2^-52 with m uniform on [0, 2^52).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from econspin.compiled import stored
from econspin.gaussians import box_muller

STREAM_DYNAMICS = 0
STREAM_DISORDER = 1
STREAM_INITIAL = 2
STREAM_FIELDS = 3
STREAM_NETWORK = 4
STREAM_FIT = 0x0F17  # the random start of the weights econspin fit-correction fits (docs/validation.md 10 used it)

# streams of the counter-based draws within one (element, round, agent)
DRAW_CHOICE = 0  # index h: the uniform of market (head) h's inversion sampler
DRAW_SPIN = 1  # Glauber: index 0; Wood's sampler: indices 3a, 3a + 1, 3a + 2 for attempt a
DRAW_DIRECTION = 2  # the Gaussians of the direction orthogonal to the field

# distinct tags for the hash levels (values below 2^60)
_LEVEL_ROUND = 1 << 60
_LEVEL_AGENT = 2 << 60
_LEVEL_DRAW = 3 << 60


@functools.lru_cache(maxsize=4096)  # about 15 us a call: a build of B elements asks for the same few seeds B times
def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from a base seed and a path of integer keys (NumPy's SeedSequence)."""
    # modulo 2**64 keeps negative seeds distinct from their absolute values
    sequence = np.random.SeedSequence(entropy=int(seed) % 2**64, spawn_key=tuple(int(k) for k in keys))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (quenched disorder only)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def dynamics_key(seed: int, replica: int) -> int:
    """The key of the rounds' draws of replica ``replica`` of a run seeded ``seed``."""
    return derive_seed(seed, STREAM_DYNAMICS, replica)


def dynamics_keys(seeds: list[int], replicas: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) int64 keys, one per batch element (seed, replica)."""
    keys = [dynamics_key(seed, replica) for seed, replica in zip(seeds, replicas)]
    return torch.tensor(keys, dtype=torch.int64, device=device)


def _signed(value: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_MULTIPLIER_1 = _signed(0xBF58476D1CE4E5B9)
_MULTIPLIER_2 = _signed(0x94D049BB133111EB)
_LOW_34, _LOW_37, _LOW_33, _LOW_32 = (1 << 34) - 1, (1 << 37) - 1, (1 << 33) - 1, (1 << 32) - 1
UNIT_BITS = 52  # a uniform is (m + 1/2) 2^-UNIT_BITS, m the word's top UNIT_BITS bits
_MANTISSA = (1 << UNIT_BITS) - 1


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser (Stafford's Mix13), a bijection of 64-bit words, on int64 tensors.

    torch's int64 multiplication wraps modulo 2^64 like unsigned arithmetic; its right shift
    is arithmetic, so each logical shift x >>> s is written (x >> s) & (2^(64 - s) - 1).
    """
    return _mix64_(x.clone())


def _mix64_int(value: int) -> int:
    """:func:`mix64` of one word, in Python integers (unsigned)."""
    value %= 1 << 64
    value ^= value >> 30
    value = (value * 0xBF58476D1CE4E5B9) % (1 << 64)
    value ^= value >> 27
    value = (value * 0x94D049BB133111EB) % (1 << 64)
    return value ^ (value >> 31)


_STEPS = ((30, _LOW_34, _MULTIPLIER_1), (27, _LOW_37, _MULTIPLIER_2), (31, _LOW_33, None))


@functools.lru_cache(maxsize=16)
def _constants_on(device: torch.device) -> tuple:
    """(the steps of :data:`_STEPS`, then to_unit's shift, mask, half and scale), as 0-d tensors on ``device``.

    An operation given a Python number wraps it into a tensor at every call (0.6-0.9 us on
    the CPU against an operation of 1-2 us at N = 1000; a round's hashes hold 28 of them);
    a 0-d tensor made once takes part in the operation as the number did: the same bits.
    Made with ``torch.full``, which copies nothing from the host (econspin.host_syncs).
    """

    def constant(value, dtype=torch.int64):
        return None if value is None else torch.full((), value, dtype=dtype, device=device)

    steps = tuple((constant(shift), constant(low), constant(multiplier)) for shift, low, multiplier in _STEPS)
    unit = (constant(12), constant(_MANTISSA), constant(0.5, torch.float64), constant(2.0**-52, torch.float64))
    return steps, unit


def _mix64_(x: torch.Tensor, own_loop: bool = False) -> torch.Tensor:
    """:func:`mix64` in place, with one scratch tensor; traced by torch.compile, :func:`mix64_exact`.

    ``own_loop``: the words are read by a loop of their own (the Gaussians' of :meth:`Draws.normal`):
    traced on the devices of UNSIGNED_HASH_DEVICES, :func:`mix64_unsigned` instead, stored.
    """
    if torch.compiler.is_compiling():
        if own_loop and x.device.type in UNSIGNED_HASH_DEVICES:
            return stored(mix64_unsigned(x))
        return mix64_exact(x)
    shifted = None  # the scratch: made by the first shift, written into by the others
    for shift, low, multiplier in _constants_on(x.device)[0]:
        shifted = x >> shift if shifted is None else torch.bitwise_right_shift(x, shift, out=shifted)
        x ^= shifted.bitwise_and_(low)
        if multiplier is not None:
            x *= multiplier
    return x


def mix64_exact(x: torch.Tensor) -> torch.Tensor:
    """:func:`mix64` with no intermediate outside int64: the form torch.compile is given.

    Inductor writes an int64 product as a C++ signed multiplication, whose overflow is
    undefined behaviour; where the compiler knows the operands' range (the hash of a traced
    ``arange`` of tags, an index expression) GCC's -O3 folded the wrapped products into wrong
    constants (docs/performance_log.md, "The hashes compiled"; experiments/hash_miscompiled.py).
    Here each product is taken in 32-bit halves (:func:`_times_exact`), so every operation is
    defined in C++ and the words are :func:`mix64`'s, bit for bit (tests/test_randomness.py).
    """
    return _traced_mix64(x, _times_exact)


def _traced_mix64(x: torch.Tensor, times) -> torch.Tensor:
    """:func:`mix64`'s steps as traced, each product x * multiplier modulo 2^64 taken by ``times(x, multiplier)``.

    A new tensor a step (Inductor fuses them); each logical shift is int64's arithmetic one masked.
    """
    for shift, low, multiplier in _STEPS:
        x = x ^ ((x >> shift) & low)
        if multiplier is not None:
            x = times(x, multiplier)
    return x


UNSIGNED_HASH_DEVICES = frozenset({"cpu"})  # where mix64_unsigned is traced: measured on the CPU, not yet on a GPU


def mix64_unsigned(x: torch.Tensor) -> torch.Tensor:
    """:func:`mix64` in uint64, for torch.compile on the CPU: int64 words in and out, the same bits.

    A product of uint64 is defined in C++ as it stands, wrapping modulo 2^64, so the hash needs
    no 32-bit halves: one product a step where :func:`mix64_exact` takes three. Inductor does
    not vectorise a loop with uint64 in it; it writes scalar C++, which here ran faster than
    mix64_exact's vectorised loop, whose int64 products ATen's AVX2 vectors emulate lane by
    lane (AVX2 has no 64-bit multiply): the 131,072 words of a direction draw at B = 128,
    N = 64, d = 32 (docs/performance.md, "The Gaussians' hash in uint64"). A float loop that
    reads these words inline would turn scalar too (Wood's attempts did, 0.7 ms slower a
    round), so only words read by a loop of their own take this form, and are stored
    (:func:`_mix64_`): the Gaussians', Wood's first attempts' (econspin.wood) and the sampled
    market's choice uniforms (econspin.fused_sampled).
    Only the products are taken in uint64: eager torch has no right shift of a uint64 tensor on
    the CPU, and a traced graph may run eagerly (torch._dynamo.explain does). The multipliers
    are the int64 ones of _STEPS, which torch and Inductor convert to uint64 modulo 2^64.
    """
    return _traced_mix64(x, _times_unsigned)


def _times_unsigned(x: torch.Tensor, multiplier: int) -> torch.Tensor:
    """The product x * multiplier modulo 2^64 as one uint64 product (defined in C++), int64 in and out."""
    return (x.view(torch.uint64) * multiplier).view(torch.int64)


def _times_exact(x: torch.Tensor, multiplier: int) -> torch.Tensor:
    """The product x * multiplier modulo 2^64 (two's complement), every intermediate within int64.

    With x = a 2^32 + b and multiplier = c 2^32 + e (b, e the unsigned low halves, a, c the
    signed high ones): x * multiplier = b e + 2^32 (a e + b c) modulo 2^64. The high word is
    the low half of a e + b c + (b e >> 32), shifted up by 32 (a left shift of a signed int64 is
    defined in C++20, modulo 2^64, which Inductor compiles to; GCC defines it in every mode);
    the low word is b e's. For both SplitMix multipliers (|c| < 2^31, e < 2^29) neither b e
    (< 2^61) nor the sum (< 2^63, bounded from the halves' ranges) leaves int64: 3 products and
    8 other operations, where the form before (cross terms masked, the high word sign-extended
    and multiplied by 2^32) took 4 and 12 (docs/performance_log.md, "The spin draw's loops").
    """
    high_multiplier, low_multiplier = multiplier >> 32, multiplier & _LOW_32
    assert _cross_sum_bound(high_multiplier, low_multiplier) < 1 << 63, "a e + b c + (b e >> 32) must stay in int64"
    low, high = x & _LOW_32, x >> 32
    product = low * low_multiplier
    cross = high * low_multiplier + low * high_multiplier + (product >> 32)
    return (cross << 32) | (product & _LOW_32)


def _cross_sum_bound(high_multiplier: int, low_multiplier: int) -> int:
    """The largest |a e + b c + (b e >> 32)| of :func:`_times_exact`, a in [-2^31, 2^31), b in [0, 2^32)."""
    return 2**31 * low_multiplier + (2**32 - 1) * abs(high_multiplier) + (((2**32 - 1) * low_multiplier) >> 32)


def _keyed(keys: torch.Tensor, mixed_tags: torch.Tensor | int, own_loop: bool = False) -> torch.Tensor:
    """One level of the hash: mix64(key ^ mixed_tags), broadcast, with mixed_tags = mix64(tag) (own_loop: _mix64_'s)."""
    return _mix64_(keys ^ mixed_tags, own_loop)


def _mixed_tags(start: int, count: int, device: torch.device, trailing: int = 0) -> torch.Tensor:
    """mix64(start + i) for i < count, shaped (count, 1, ... 1) with ``trailing`` ones to broadcast.

    Kept from round to round eagerly (shaped too: a view is an operation a round pays), fused
    into its use compiled.
    """
    if torch.compiler.is_compiling():  # a traced arange costs nothing fused (torch.compile ignores the cache)
        return mix64(_traced_tags(start, count, device)).reshape(count, *([1] * trailing))
    return _kept_mixed_tags(start, count, device, trailing)


def _traced_tags(start: int, count: int, device: torch.device) -> torch.Tensor:
    """The tags start + i for i < count (< 2^32), as torch.compile should trace them: (i | high) + low.

    Inductor propagates arange(start, ...) and any sum or product of it with constants into one
    index expression, and its Triton code typed that expression int32, with a level's constant
    (2^61) in it: sampled mode under run.compile failed to compile on CUDA (docs/performance.md,
    "On a GPU"). A bitwise or is outside that propagation, so the constant's high bits join an
    int64 value instead; for i < 2^32, i | high (high's low 32 bits clear) is i + high.
    """
    low = start & 0xFFFFFFFF
    return (torch.arange(count, dtype=torch.int64, device=device) | (start - low)) + low


@functools.lru_cache(maxsize=256)
def _kept_mixed_tags(start: int, count: int, device: torch.device, trailing: int = 0) -> torch.Tensor:
    """:func:`_mixed_tags` eagerly: the tags of a level do not change from round to round."""
    tags = mix64(torch.arange(start, start + count, dtype=torch.int64, device=device))
    return tags.reshape(count, *([1] * trailing))


def unit_integers(words: torch.Tensor) -> torch.Tensor:
    """The integers m in [0, 2^UNIT_BITS) of the uniforms (m + 1/2) 2^-UNIT_BITS :func:`to_unit` makes of ``words``.

    (Eagerly to_unit takes the shift and the mask as tensors made once: the same bits.)
    """
    return (words >> (64 - UNIT_BITS)) & _MANTISSA


def to_unit(words: torch.Tensor) -> torch.Tensor:
    """Uniforms on (0, 1) in float64 from int64 words: (top 52 bits + 1/2) 2^-52."""
    if torch.compiler.is_compiling():
        return unit_integers(words).to(torch.float64).add_(0.5).mul_(2.0**-UNIT_BITS)
    shift, mask, half, scale = _constants_on(words.device)[1]  # the same numbers, made once
    return ((words >> shift) & mask).to(torch.float64).add_(half).mul_(scale)


@dataclass(frozen=True)
class Draws:
    """The random numbers of one round for a set of agents: a key per (element, round, agent).

    ``keys`` has any shape (usually (B, N)); ``words``, ``uniform`` and ``normal`` return
    (count, *keys.shape), the index of the draw first, so that every later operation runs over
    contiguous rows of agents. Indexing selects agents (``draws[mask]``), keeping every number
    they would have had.

    ``block``: where the keys are those of a block of rounds made at once (:func:`round_draws`),
    the block, and ``place`` the round's in it: a few uniforms are then read from the block's
    own, made for all its rounds at once (:class:`RoundBlock`).
    """

    keys: torch.Tensor
    block: "RoundBlock | None" = None
    place: int = 0

    def __getitem__(self, index) -> "Draws":
        return Draws(self.keys[index])

    # traced under run.compile (econspin.compiled): the tags' arange and the hash fuse into one
    # loop, in the defined arithmetic of mix64_exact (docs/performance_log.md, "The hashes compiled")
    def words(self, stream: int, count: int, start: int = 0, axis: int = 0, own_loop: bool = False) -> torch.Tensor:
        """(count, ...) int64 hashes of (stream, index) for index in [start, start + count).

        ``axis`` -1 puts the index last, (..., count): the same key ^ tag, broadcast the other way.
        ``own_loop``: the caller reads the words in a loop of their own (the same words; compiled,
        another form of the hash: :func:`_mix64_`).
        """
        keys = self.keys.unsqueeze(-1) if axis == -1 else self.keys
        trailing = 0 if axis == -1 else keys.dim()
        tags = _mixed_tags(_LEVEL_DRAW + (stream << 32) + start, count, keys.device, trailing)
        return _keyed(keys, tags, own_loop)

    def uniform(self, stream: int, count: int, start: int = 0, own_loop: bool = False) -> torch.Tensor:
        """(count, ...) float64 uniforms on (0, 1), indices [start, start + count) of ``stream``.

        ``own_loop``: their words hashed in a loop of their own (:meth:`words`), for a loop that
        reads them with much else (the sampled market's inversion); the same numbers.
        """
        if self.block is not None and count <= BLOCK_UNIFORMS:
            # a copy: a caller may write into what it is given, and a round may be played again
            return self.block.uniforms(stream, count, start)[self.place].clone()
        return to_unit(self.words(stream, count, start, own_loop=own_loop))

    def normal(self, stream: int, count: int, dtype: torch.dtype = torch.float64, axis: int = 0) -> torch.Tensor:
        """(count, ...) standard Gaussians in ``dtype`` (float64 or float32), a Box-Muller pair a word.

        From ceil(count / 2) words (:func:`econspin.gaussians.box_muller`): a word's two 32-bit
        halves give the uniforms (h + 1/2) 2^-32 of the radius and the angle; the radius stops
        at 6.7, a tail of probability 1.2e-10. float32 takes the same words and gives the float64
        pair to float32 rounding of its uniforms (a radius at least 3.5e-4). ``axis`` -1 puts
        the index last, (..., count): the same numbers, each agent's contiguous.
        """
        return box_muller(self.words(stream, (count + 1) // 2, axis=axis, own_loop=True), count, dtype, axis)


def round_draws(keys: torch.Tensor, round_index: int, agents: int) -> Draws:
    """The draws of round ``round_index`` for elements with ``keys`` (B,) and agents 0..agents-1.

    The agents' keys of a block of rounds are made at once and kept beside ``keys``
    (:func:`_round_block`): a round then reads its own instead of hashing twice.
    """
    rounds = _block_rounds(keys.numel() * agents)
    if rounds == 1 or torch.compiler.is_compiling():  # traced, the hashes fuse into the round instead
        return agent_draws(keys, round_tag(round_index), agents)  # the tag a Python scalar: no copy to the device
    place = round_index % rounds
    block = _round_block(keys, round_index - place, rounds, agents)
    return Draws(block.keys[place], block, place)


ROUND_BLOCK = 64  # rounds whose agents' keys are made together (eagerly)
ROUND_BLOCK_ENTRIES = 1 << 18  # at most this many keys in a block (2 MiB): many agents make it a round or two
BLOCK_UNIFORMS = 4  # a block keeps a stream's uniforms where a round asks for at most this many an agent (8 MiB)


class RoundBlock:
    """The agents' keys of a block of rounds, (rounds, B, N), and the uniforms its rounds asked for.

    A round's choice uniforms (one a market) and Glauber's (one) are one more level of the
    hash and a conversion, ~17 operations of fixed cost a round; made for the whole block at
    once when its first round asks, each later round reads its own. Only a stream asked for at
    most BLOCK_UNIFORMS at a time is kept (Wood's attempts, six and more, are not).
    """

    def __init__(self, keys: torch.Tensor):
        self.keys = keys
        self._uniforms: dict[tuple[int, int, int], torch.Tensor] = {}

    def uniforms(self, stream: int, count: int, start: int) -> torch.Tensor:
        """(rounds, count, B, N): each round's ``Draws.uniform(stream, count, start)``, the same bits."""
        kept = self._uniforms.get((stream, count, start))
        if kept is None:
            kept = Draws(self.keys).uniform(stream, count, start).transpose(0, 1).contiguous()
            self._uniforms[(stream, count, start)] = kept
        return kept


def _block_rounds(keys_per_round: int) -> int:
    """How many rounds a block of agents' keys holds: ROUND_BLOCK, fewer where a round has many keys."""
    return max(1, min(ROUND_BLOCK, ROUND_BLOCK_ENTRIES // max(keys_per_round, 1)))


def _round_block(keys: torch.Tensor, start: int, rounds: int, agents: int) -> RoundBlock:
    """The block of rounds start .. start + rounds - 1: its keys of (element, round, agent), (rounds, B, N).

    What :func:`agent_draws` gives each round, hashed for the block at once: the two levels of
    the hash are ~25 operations a round, a fixed cost (about 35 us at N = 1000 on the CPU),
    which a block pays once. The block is kept for ``keys`` (until the tensor goes), stamped
    with its start, size, agents and the tensor's version, so that a key changed in place is
    never read stale.
    """
    stamp = (start, rounds, agents, keys._version)
    kept = _ROUND_BLOCKS.get(id(keys))
    if kept is not None and kept[0] == stamp:
        return kept[1]
    if kept is None:  # the first block of these keys: it goes when they go
        weakref.finalize(keys, _ROUND_BLOCKS.pop, id(keys), None)
    first = _LEVEL_ROUND + start
    tags = mix64(torch.arange(first, first + rounds, dtype=torch.int64, device=keys.device))  # round_tag of each
    round_keys = _keyed(keys[None, :], tags[:, None])  # (rounds, B): mix64(key ^ round_tag(round))
    block = RoundBlock(_keyed(round_keys[..., None], _mixed_tags(_LEVEL_AGENT, agents, keys.device)))
    _ROUND_BLOCKS[id(keys)] = (stamp, block)
    return block


# The block of each element-key tensor in use, by the tensor's id (a rollout hands the same
# tensor from state to state); not an attribute of the tensor, which torch would pickle with it
_ROUND_BLOCKS: dict[int, tuple[tuple, RoundBlock]] = {}


def round_tag(round_index: int) -> int:
    """The mixed tag of round ``round_index``: element key -> key of (element, round) is mix64(key ^ tag)."""
    return _signed(_mix64_int(_LEVEL_ROUND + int(round_index)))


def agent_draws(keys: torch.Tensor, mixed_round: torch.Tensor | int, agents: int) -> Draws:
    """:func:`round_draws` from the round's tag (:func:`round_tag`), a Python int or a 0-d int64 tensor.

    The compiled round (``run.compile``) is given the tag as a tensor, so that it traces the
    keying of its agents once for every round instead of once per round index. There the agents'
    keys are stored (econspin.compiled.stored): inlined, Inductor hashed them again in every loop
    over a stream's words, one mix64 per word more (docs/performance_log.md, "The agents' keys stored").
    """
    round_keys = _keyed(keys, mixed_round)
    return Draws(stored(_keyed(round_keys.unsqueeze(-1), _mixed_tags(_LEVEL_AGENT, agents, keys.device))))
