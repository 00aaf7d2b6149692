"""The settings of one recovery run. Field help texts become the ``prunescope recover`` flags."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from prunescope.config import field, require

METHODS = ["lora", "partial", "full"]
DATA_SOURCES = ["self", "dataset"]
LOSSES = ["sft", "kd", "mix"]
SCHEDULERS = ["constant", "linear", "cosine"]

# Fields that change what a step computes; a checkpoint made with other values cannot be resumed.
# (max_steps and save_every may change between runs: a larger --max-steps continues training.)
RESUME_FIELDS = ("method", "lora_r", "lora_alpha", "lora_dropout", "partial_layers", "qlora", "data", "prompts",
                 "prompts_data", "num_prompts", "filter_correct", "gen_max_new_tokens", "loss", "kd_topk",
                 "kd_temperature", "kd_weight", "lr", "lr_scheduler", "warmup_steps", "weight_decay", "max_grad_norm", "batch_size",
                 "grad_accum", "max_seq_len", "seed")


@dataclass
class RecoverConfig:
    """How to heal a pruned model. The defaults follow the reference recipe (LoRA on all linear
    projections, constant lr 2e-4, completion-only SFT on self-generated responses, one epoch) at a
    rank small enough for CPU; the paper used QLoRA r=64, alpha=16, dropout 0.05."""
    method: str = field("lora", choices=METHODS,
                        help="what trains: lora (adapters on every linear projection), partial (the last "
                             "--partial-layers decoder blocks plus lm_head), full (every weight)")
    lora_r: int = field(8, help="LoRA rank (the paper used 64 on 7-8B models)")
    lora_alpha: float = field(16.0, help="LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = field(0.05, help="dropout on the LoRA input")
    partial_layers: int = field(2, help="--method partial: how many of the last decoder blocks train (with lm_head)")
    qlora: bool = field(False, help="load the student in 4-bit (bitsandbytes, GPU only) and train LoRA on top")
    data: str = field("self", choices=DATA_SOURCES,
                      help="self: train on the teacher's own greedy responses to the prompts; dataset: on the "
                           "responses that come with the prompts")
    prompts: str = field("gsm8k", help="prompt source: gsm8k, a task name (e.g. arith_add_1d_gen; its calib split), "
                                       "a JSONL file of {prompt} / {messages} / {prompt, response} rows, or a "
                                       "hub dataset id")
    prompts_data: str | None = field(None, help="dataset file or folder for prompt tasks that read one (GSM8K: a "
                                                "folder with train.jsonl/test.jsonl; default $PRUNESCOPE_GSM8K_DATA)")
    num_prompts: int = field(256, help="how many prompts to use (0 = all the source has)")
    filter_correct: bool = field(True, help="--data self: keep only responses the task's checker accepts "
                                            "(sources without a checker keep everything)")
    gen_max_new_tokens: int = field(256, help="--data self: longest teacher response for free-form prompts "
                                              "(task prompts use the task's own limit)")
    gen_batch_size: int = field(16, help="--data self: prompts per teacher generation batch")
    loss: str = field("sft", choices=LOSSES,
                      help="sft: cross-entropy on the response tokens only; kd: KL to the teacher's token "
                           "distribution on the response tokens; mix: --kd-weight * kd + (1 - --kd-weight) * sft")
    kd_topk: int = field(0, help="kd: keep only the teacher's top-k tokens per position (0 = whole vocabulary)")
    kd_temperature: float = field(1.0, help="kd: softmax temperature for teacher and student")
    kd_weight: float = field(0.5, help="mix: weight of the kd term")
    lr: float = field(2e-4, help="peak learning rate (AdamW)")
    lr_scheduler: str = field("constant", choices=SCHEDULERS, help="learning-rate schedule after warm-up")
    warmup_steps: int = field(0, help="linear warm-up steps")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping norm (0 = off)")
    max_steps: int | None = field(None, help="optimizer steps (default: one epoch over the training examples)")
    batch_size: int = field(8, help="examples per micro-batch (per process)")
    grad_accum: int = field(1, help="micro-batches per optimizer step")
    max_seq_len: int = field(512, help="longest prompt+response in tokens (longer examples are cut at the end)")
    seed: int = field(0, help="seed for prompt sampling, data order, adapter init and dropout")
    save_every: int = field(50, help="write a resumable checkpoint every this many steps (0 = only at the end)")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a UsageError naming the flag for any value out of range."""
        require(self.method in METHODS, f"--method {self.method!r} is not one of {', '.join(METHODS)}")
        require(self.data in DATA_SOURCES, f"--data {self.data!r} is not one of {', '.join(DATA_SOURCES)}")
        require(self.loss in LOSSES, f"--loss {self.loss!r} is not one of {', '.join(LOSSES)}")
        require(self.lr_scheduler in SCHEDULERS, f"--lr-scheduler {self.lr_scheduler!r} is not one of "
                                                 f"{', '.join(SCHEDULERS)}")
        require(self.max_steps is None or self.max_steps >= 1,
                f"--max-steps must be at least 1 (got {self.max_steps}); leave it out for one epoch")
        for name in ("lora_r", "partial_layers", "batch_size", "grad_accum", "max_seq_len", "gen_max_new_tokens",
                     "gen_batch_size"):
            value = getattr(self, name)
            require(value >= 1, f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        for name in ("num_prompts", "kd_topk", "warmup_steps", "save_every"):
            value = getattr(self, name)
            require(value >= 0, f"--{name.replace('_', '-')} must be 0 or more (got {value})")
        require(0.0 <= self.lora_dropout < 1.0, f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        require(0.0 <= self.kd_weight <= 1.0, f"--kd-weight must be in [0, 1] (got {self.kd_weight})")
        require(self.kd_temperature > 0, f"--kd-temperature must be positive (got {self.kd_temperature})")
        require(self.lr > 0, f"--lr must be positive (got {self.lr})")
        require(not self.qlora or self.method == "lora", "--qlora trains LoRA adapters; use it with --method lora")
        require(bool(str(self.prompts).strip()), "--prompts is empty; pass gsm8k, a task name, a JSONL file or a "
                                                  "hub dataset id")

    @property
    def needs_teacher(self) -> bool:
        """Self-generated data and distillation both need the unpruned model."""
        return self.data == "self" or self.loss in ("kd", "mix")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, other) -> "RecoverConfig":
        """The RecoverConfig part of a larger dataclass (the CLI's Config)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in asdict(other).items() if k in names})
