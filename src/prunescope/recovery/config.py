"""The settings of one recovery run. Field help texts become the ``prunescope recover`` flags."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from prunescope.config import field, require

METHODS = ["lora", "partial", "full"]
DATA_SOURCES = ["self", "dataset"]
LOSSES = ["sft", "kd", "mix", "onpolicy"]
SCHEDULERS = ["constant", "linear", "cosine"]
DECODING = ["sample", "greedy"]
TRUNCATED = ["keep", "drop"]
SWITCH = ["auto", "on", "off"]
MASTER_WEIGHTS = ["fp32", "model"]
DEFAULT_PROMPTS = "self-instruct"

# Fields that change what a step computes; a checkpoint made with other values cannot be resumed.
# (max_steps and save_every may change between runs: a larger --max-steps continues training.)
RESUME_FIELDS = ("method", "lora_r", "lora_alpha", "lora_dropout", "partial_layers", "qlora", "data", "prompts",
                 "prompts_data", "num_prompts", "filter_correct", "gen_max_new_tokens", "gen_decoding",
                 "gen_temperature", "gen_top_p", "truncated", "disjoint_from", "loss", "kd_topk",
                 "kd_temperature", "kd_weight", "onpolicy_lambda", "onpolicy_beta", "onpolicy_temperature",
                 "onpolicy_max_new_tokens", "token_budget", "lr", "lr_scheduler", "warmup_steps", "adam_beta1", "adam_beta2",
                 "weight_decay", "max_grad_norm", "batch_size", "grad_accum", "max_seq_len", "master_weights", "seed")


@dataclass
class RecoverConfig:
    """How to heal a pruned model. The defaults follow the reference recipe of Shrestha et al. (2026):
    the unpruned model answers general instruction prompts (sampled at T 0.9, top-p 0.95, no
    correctness filter), and the pruned model learns those answers with completion-only SFT, LoRA on
    every linear projection, constant lr 2e-4, one epoch, at a rank small enough for CPU. Their runs
    used QLoRA r=64, alpha=16, dropout 0.05 with 50 warm-up steps, AdamW betas (0.9, 0.99) and weight
    decay 1e-4: ``study --config paper`` sets those."""
    method: str = field("lora", choices=METHODS,
                        help="what trains: lora (adapters on every linear projection), partial (the last "
                             "--partial-layers decoder blocks plus lm_head), full (every weight)")
    lora_r: int = field(8, help="LoRA rank (the paper used 64 on 7-8B models)")
    lora_alpha: float = field(16.0, help="LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = field(0.05, help="dropout on the LoRA input")
    partial_layers: int = field(3, help="--method partial: how many of the last decoder blocks train with lm_head "
                                        "(Lu et al. 2024 found lm_head + the last 3 best)")
    qlora: bool = field(False, help="load the student in 4-bit (bitsandbytes, GPU only) and train LoRA on top")
    data: str = field("self", choices=DATA_SOURCES,
                      help="self: train on the unpruned teacher's own responses to the prompts; dataset: on the "
                           "responses that come with the prompts")
    prompts: str = field(DEFAULT_PROMPTS,
                         help="prompt source: self-instruct (427 general instructions shipped with prunescope, "
                              "Apache-2.0), a hub chat dataset id (e.g. allenai/Dolci-..., tatsu-lab/alpaca), a "
                              "JSONL file of {prompt} / {messages} / {prompt, response} rows, or a task name "
                              "(task-specific recovery on its calib split, e.g. arith_add_1d_gen or gsm8k)")
    prompts_data: str | None = field(None, help="dataset file or folder for prompt tasks that read one (GSM8K: a "
                                                "folder with train.jsonl/test.jsonl; default $PRUNESCOPE_GSM8K_DATA)")
    num_prompts: int = field(256, help="how many prompts to use (0 = all the source has)")
    filter_correct: bool = field(False, help="--data self with task prompts: keep only responses the task's checker "
                                             "accepts (the paper filters nothing; general prompts have no checker)")
    disjoint_from: list[str] = field(default_factory=list,
                                     help="task prompts: also drop recovery prompts whose question equals (in "
                                          "canonical form: a+b = b+a, whitespace and format ignored) an evaluation "
                                          "item of these tasks; the prompt task's own evaluation items always are")
    gen_max_new_tokens: int = field(512, help="--data self: longest teacher response for free-form prompts "
                                              "(task prompts use the task's own limit)")
    gen_decoding: str = field("sample", choices=DECODING,
                              help="--data self: how the teacher answers: sample (the paper: --gen-temperature, "
                                   "--gen-top-p) or greedy")
    gen_temperature: float = field(0.9, help="--data self: sampling temperature")
    gen_top_p: float = field(0.95, help="--data self: nucleus sampling mass")
    truncated: str = field("keep", choices=TRUNCATED,
                           help="--data self: a response cut by --gen-max-new-tokens is kept without a stop token "
                                "(keep) or left out (drop)")
    gen_batch_size: int = field(16, help="--data self: prompts per teacher generation batch")
    loss: str = field("sft", choices=LOSSES,
                      help="sft: cross-entropy on the response tokens only; kd: forward KL(teacher || student) of "
                           "the token distributions at the response tokens (with --data self the sequences are the "
                           "teacher's own responses: distillation on teacher-generated sequences); mix: --kd-weight "
                           "* kd + (1 - --kd-weight) * sft; onpolicy: GKD (Agarwal et al. 2024, TRL GKDTrainer): the "
                           "student samples responses with its current weights, the teacher scores them, generalized "
                           "JSD (--onpolicy-beta) over the sampled tokens")
    kd_topk: int = field(0, help="kd: keep only the teacher's top-k tokens per position (0 = whole vocabulary)")
    kd_temperature: float = field(1.0, help="kd: softmax temperature for teacher and student")
    kd_weight: float = field(0.5, help="mix: weight of the kd term")
    onpolicy_lambda: float = field(0.5, help="onpolicy: fraction of micro-batches whose sequences the student samples; "
                                             "the rest train on --data's sequences (TRL's lmbda, default 0.5; 1 = "
                                             "fully on-policy, and no teacher responses are generated)")
    onpolicy_beta: float = field(0.5, help="onpolicy: generalized JSD interpolation (TRL's beta, default 0.5): 0 = "
                                           "forward KL(teacher || student), as --loss kd; 1 = reverse KL")
    onpolicy_temperature: float = field(0.9, help="onpolicy: the student's sampling temperature (top-k 0, top-p 1, "
                                                  "as TRL)")
    onpolicy_max_new_tokens: int = field(128, help="onpolicy: longest sampled response (TRL's default 128)")
    token_budget: int = field(0, help="train on exactly this many response tokens (the last step takes only the "
                                      "tokens left), so runs with different losses or data compare at equal budget; "
                                      "--max-steps, when also given, caps the steps; a decaying --lr-scheduler is "
                                      "planned over the steps the budget takes at the examples' mean response "
                                      "length and holds its last value beyond (0 = off: --max-steps or one epoch)")
    lr: float = field(2e-4, help="peak learning rate (AdamW)")
    lr_scheduler: str = field("constant", choices=SCHEDULERS, help="learning-rate schedule after warm-up")
    warmup_steps: int = field(0, help="linear warm-up steps")
    adam_beta1: float = field(0.9, help="AdamW beta1")
    adam_beta2: float = field(0.999, help="AdamW beta2 (the paper: 0.99)")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping norm (0 = off)")
    max_steps: int | None = field(None, help="optimizer steps (default: one epoch over the training examples)")
    batch_size: int = field(8, help="examples per micro-batch (per process)")
    grad_accum: int = field(1, help="micro-batches per optimizer step")
    max_seq_len: int = field(512, help="longest prompt+response in tokens (longer examples are cut at the end)")
    gradient_checkpointing: str = field("auto", choices=SWITCH,
                                        help="recompute activations in the backward pass to save memory (auto: on "
                                             "when training on a GPU)")
    master_weights: str = field("fp32", choices=MASTER_WEIGHTS,
                                help="fp32: partial/full training of a 16-bit model keeps the trained weights in "
                                     "float32 and runs the forward in autocast, so small updates do not round "
                                     "away; model: step the weights in the model's own dtype")
    offload_teacher: bool = field(True, help="move the teacher to CPU while the student trains with --loss sft (it is "
                                             "only needed for generating responses)")
    seed: int = field(0, help="seed for prompt sampling, teacher sampling, data order, adapter init and dropout")
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
        for name in ("num_prompts", "kd_topk", "warmup_steps", "save_every", "token_budget"):
            value = getattr(self, name)
            require(value >= 0, f"--{name.replace('_', '-')} must be 0 or more (got {value})")
        require(0.0 <= self.lora_dropout < 1.0, f"--lora-dropout must be in [0, 1) (got {self.lora_dropout})")
        require(0.0 <= self.kd_weight <= 1.0, f"--kd-weight must be in [0, 1] (got {self.kd_weight})")
        for name in ("onpolicy_lambda", "onpolicy_beta"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"--{name.replace('_', '-')} must be in [0, 1] (got {value})")
        require(self.onpolicy_temperature > 0, f"--onpolicy-temperature must be positive (got {self.onpolicy_temperature})")
        require(self.onpolicy_max_new_tokens >= 1,
                f"--onpolicy-max-new-tokens must be at least 1 (got {self.onpolicy_max_new_tokens})")
        require(self.kd_temperature > 0, f"--kd-temperature must be positive (got {self.kd_temperature})")
        require(self.lr > 0, f"--lr must be positive (got {self.lr})")
        require(self.gen_decoding in DECODING, f"--gen-decoding {self.gen_decoding!r} is not one of {', '.join(DECODING)}")
        require(self.truncated in TRUNCATED, f"--truncated {self.truncated!r} is not one of {', '.join(TRUNCATED)}")
        require(self.gradient_checkpointing in SWITCH, f"--gradient-checkpointing {self.gradient_checkpointing!r} is "
                                                       f"not one of {', '.join(SWITCH)}")
        require(self.master_weights in MASTER_WEIGHTS, f"--master-weights {self.master_weights!r} is not one of "
                                                       f"{', '.join(MASTER_WEIGHTS)}")
        require(self.gen_temperature > 0, f"--gen-temperature must be positive (got {self.gen_temperature})")
        require(0.0 < self.gen_top_p <= 1.0, f"--gen-top-p must be in (0, 1] (got {self.gen_top_p})")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            require(0.0 <= value < 1.0, f"--{name.replace('_', '-')} must be in [0, 1) (got {value})")
        self.disjoint_from = [str(t) for t in (self.disjoint_from or [])]
        require(not self.qlora or self.method == "lora", "--qlora trains LoRA adapters; use it with --method lora")
        require(bool(str(self.prompts).strip()), f"--prompts is empty; pass {DEFAULT_PROMPTS}, a hub dataset id, a "
                                                  f"JSONL file or a task name")

    @property
    def needs_teacher(self) -> bool:
        """Self-generated data and distillation both need the unpruned model."""
        return self.data == "self" or self.loss in ("kd", "mix", "onpolicy")

    @property
    def fully_on_policy(self) -> bool:
        """Every micro-batch is the student's own samples: no teacher responses are needed."""
        return self.loss == "onpolicy" and self.onpolicy_lambda >= 1.0

    @property
    def sequences(self) -> str:
        """Whose sequences the loss is computed on, for the record."""
        source = "teacher-generated" if self.data == "self" else "dataset"
        if self.loss != "onpolicy":
            return source
        if self.fully_on_policy:
            return "student-generated (on-policy)"
        return f"student-generated (on-policy) in a fraction {self.onpolicy_lambda:g} of micro-batches, else {source}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, other) -> "RecoverConfig":
        """The RecoverConfig part of a larger dataclass (the CLI's Config)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in asdict(other).items() if k in names})
