"""``copy_words_gen``: copy four words. The simplest generative skill, a floor under the others: a
pruned model that cannot copy will not do arithmetic either."""
from __future__ import annotations

from prunescope.tasks.sampling import item_id, synthetic_items
from prunescope.tasks.spec import Item, Task, register_task

WORDS = """apple river stone cloud table window garden yellow silver music paper orange forest bridge candle
doctor engine finger guitar hammer island jacket kitten ladder marble needle ocean pencil rabbit saddle
tomato umbrella valley wagon zebra anchor basket circle dragon feather glove harbor insect jungle kettle
lemon mirror nest onion pepper quilt rocket sugar tiger violin whale blanket castle desert eagle fabric
honey iron jelly kitchen lantern meadow noodle oyster parrot queen ribbon shadow thunder velvet winter
bottle carpet dinner elbow flower gravel helmet igloo jigsaw koala lizard mango napkin olive pillow
rain salt tunnel vessel walnut yogurt button cactus donkey emerald falcon ginger hollow ivory jasmine
lobster marsh nickel orbit pebble radish spider turnip violet willow amber breeze copper daisy ember""".split()
SHOTS = 5
N_WORDS = 4


def _draw(rng):
    return tuple(rng.sample(WORDS, N_WORDS))


def _check(item: Item, output: str) -> bool:
    return " ".join(output.split()) == item.gold


def _copy_task() -> Task:
    name = family = "copy_words"

    def make(n, seed, split):
        def build(q, shots, rng, i):
            lines = "".join(f"Copy: {' '.join(s)}\nOutput: {' '.join(s)}\n" for s in shots)
            text = " ".join(q)
            return Item(id=item_id(family, split, seed, i), prompt=lines + f"Copy: {text}\nOutput:",
                        gold=text, target=" " + text)
        return synthetic_items(family=family, n=n, seed=seed, split=split, draw=_draw, key=" ".join, build=build,
                               shots=SHOTS, task="copy_words_gen")
    return Task(name="copy_words_gen", kind="generate", description=f"copy {N_WORDS} words, {SHOTS}-shot",
                make_items=make, check=_check, stop=["\n"], max_new_tokens=24, family=family)


register_task("copy_words_gen")(_copy_task)
