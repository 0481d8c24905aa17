"""Shared machinery of pipec's textual-feedback optimizers (protegi, opro, ape, evoprompt,
feedback, human): candidates as instructions per node, budgeted evaluations that are child runs,
per-node attribution of failures, and the prompt-writing LM.

A subclass implements :meth:`TextualOptimizer.search`; everything else is here:

- **Candidates** are ``{node: instruction}`` maps. The original program is candidate ``c0`` and
  stays a candidate to the end: the compile returns the best-scoring candidate on the scoring
  set (a seeded sample of ``val_size`` valset examples), the original winning ties. When the
  sample is smaller than the valset, the winner is *confirmed* on the whole valset against the
  original (calls for that are held back from the search), so the result never scores below the
  student on the valset.
- **Evaluations** go through ``dspy.Evaluate`` with ``callback_metadata`` (``metric_key`` =
  ``<method>.<kind>``, plus ``pipec.candidate``, ``pipec.parent``, ``pipec.step``,
  ``pipec.origin``), so a compile run records each as a child run with its instructions per node.
  The metric is wrapped to keep each example's per-node ``Verdict`` (with its feedback), so
  attribution and failure reports cost no extra LM calls.
- **Budget**: every LM call (task, prompt writer, judge) is counted and gated by one
  :class:`optimizers.budget.Budget`; when it is spent the search stops and the best program so
  far is returned. ``trajectory`` holds ``(step, best score)`` pairs; ``history`` every candidate.
- **Attribution**: the node whose validators fail most on an evaluation is rewritten first.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.teleprompt.teleprompt import Teleprompter

from metrics.judge import LLMJudge
from metrics.verdict import Verdict
from optimizers.budget import Budget, BudgetStop
from programs.errors import BudgetExhaustedError, ConfigError, PipelineError
from programs.pipeline import Pipeline

__all__ = ["Candidate", "Evaluation", "Outcome", "Paraphrase", "TextualOptimizer", "clean_instruction",
           "instruction_diff"]

logger = logging.getLogger(__name__)

MAX_INSTRUCTION_CHARS = 2000
JUDGE_RUBRIC = ("The candidate output should match the reference output. Score how close the candidate is to the "
                "reference, and in the comment say specifically what to change to get closer to the reference.")


@dataclass
class Candidate:
    """One point of the search: an instruction per node, and where it came from."""

    id: str
    instructions: dict[str, str]
    parent: str | None = None
    step: int = 0
    origin: str = "original"
    node: str | None = None  # the node this candidate changed
    score: float | None = None  # on the scoring set, 0..1
    pulls: list[float] = field(default_factory=list)  # minibatch scores (bandits, minibatch checks)
    attach: dict[str, Any] = field(default_factory=dict)  # node state beside instructions ({node: QueryPrompt})

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "step": self.step, "origin": self.origin, "node": self.node,
                "score": self.score, "instructions": self.instructions}


@dataclass
class Outcome:
    """One example's result: the prediction (None when the program raised) and node verdicts."""

    example: dspy.Example
    prediction: Any
    verdicts: dict[str, Verdict]
    score: float


@dataclass
class Evaluation:
    """A candidate's evaluation on some examples (score in 0..1)."""

    score: float
    outcomes: list[Outcome]
    calls: int = 0

    def node_failures(self) -> Counter:
        """How many examples each node failed on."""
        return Counter(name for o in self.outcomes for name, v in o.verdicts.items() if not v.passed)

    def failures(self, node: str) -> list[Outcome]:
        return [o for o in self.outcomes if node in o.verdicts and not o.verdicts[node].passed]


class Paraphrase(dspy.Signature):
    """Generate a variation of the following instruction while keeping the semantic meaning."""

    task: str = dspy.InputField(desc="the step the instruction is for")
    instruction: str = dspy.InputField(desc="the instruction to rephrase")
    paraphrase: str = dspy.OutputField(desc="the new instruction, complete and self-contained")


def clean_instruction(text: Any) -> str | None:
    """A proposed instruction, stripped of wrappers small models add; None when unusable."""
    if text is None:
        return None
    text = str(text).strip()
    match = re.search(r"<prompt>(.*?)(</prompt>|$)", text, re.S)
    if match:
        text = match.group(1).strip()
    text = re.sub(r"^(new )?(instruction|prompt)\s*:\s*", "", text, flags=re.I).strip().strip('"').strip()
    if len(text) < 8 or len(text) > MAX_INSTRUCTION_CHARS:
        return None
    return text


def instruction_diff(before: str, after: str, node: str = "") -> str:
    """A unified diff of two instructions, word-wrapped by sentence for reading."""
    split = lambda s: [line + "\n" for line in re.split(r"(?<=[.!?])\s+", s.strip())]  # noqa: E731
    return "".join(difflib.unified_diff(split(before), split(after), fromfile=f"{node} (current)",
                                        tofile=f"{node} (proposed)"))


class TextualOptimizer(Teleprompter):
    """Base of the optimizers where an LM reads scores and written feedback and rewrites node
    instructions. Demos are kept as they are.

    Args:
        metric: A ``metrics.PipelineMetric`` (its per-node verdicts and feedback are used).
        prompt_lm: The LM that writes prompts: a ``dspy.LM`` or anything with ``lm`` and
            ``adapter`` attributes; the task LM in force when None.
        max_lm_calls: Cap on LM calls the compile makes (task, prompt writer and judge alike).
        max_tokens: Cap on tokens; None for none.
        max_cost: Cap on US dollars (LiteLLM's price map; the embedded LM costs 0); None for none.
        val_size: Valset examples candidates are scored on (a seeded sample); 0 or None: all.
        nodes: Only rewrite these nodes (comma-separated or a list); default every node.
        temperature: Sampling temperature of the prompt-writing calls.
        num_threads: Evaluation threads.
        seed: Seed of samples, minibatches and sampling.
    """

    method = "textual"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's ``__init__(..., **common)`` reports the base's settings in its signature too,
        so ``--param`` checking (``optimizers.params.accepted_names``) knows them."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        own = inspect.signature(init)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in params}
        params += [p for p in inspect.signature(TextualOptimizer.__init__).parameters.values()
                   if p.kind is p.KEYWORD_ONLY and p.name not in names]
        init.__signature__ = own.replace(parameters=params)

    def __init__(self, metric: Any = None, *, prompt_lm: Any = None, max_lm_calls: int | None = 150,
                 max_tokens: int | None = None, max_cost: float | None = None, val_size: int | None = 8,
                 nodes: str | Sequence[str] | None = None, temperature: float = 0.7, num_threads: int = 1,
                 seed: int = 0) -> None:
        super().__init__()
        Budget(max_lm_calls, max_tokens, max_cost)  # checks the caps now, before a run is started
        if val_size is not None and int(val_size) < 0:
            raise ConfigError(f"--param val_size={val_size}: expected a number >= 0 (0 means the whole valset)")
        self.metric = metric
        self.prompt_lm = prompt_lm
        self.max_lm_calls, self.max_tokens, self.max_cost = max_lm_calls, max_tokens, max_cost
        self.val_size = int(val_size or 0)
        self.only_nodes = [n.strip() for n in nodes.split(",")] if isinstance(nodes, str) else nodes
        self.temperature = float(temperature)
        self.num_threads, self.seed = max(1, int(num_threads)), int(seed)
        self.budget = Budget(max_lm_calls, max_tokens, max_cost)
        self.history: list[Candidate] = []
        self.trajectory: list[tuple[int, float]] = []
        self.chosen: dict[str, Any] = {}

    # -- the compile --------------------------------------------------------------------------

    def compile(self, student: dspy.Module, *, trainset: Sequence[dspy.Example],
                valset: Sequence[dspy.Example] | None = None) -> dspy.Module:
        """A copy of ``student`` with the best instructions found (the student is not changed).

        Raises:
            PipelineError: ``student`` is not a pipec Pipeline, or the metric is not a PipelineMetric.
        """
        if not isinstance(student, Pipeline):
            raise PipelineError(f"--optimizer {self.method} rewrites the nodes of pipec Pipelines, "
                                f"got {type(student).__name__}")
        if not hasattr(self.metric, "judge") or not hasattr(self.metric, "score"):
            raise PipelineError(f"--optimizer {self.method} needs a metrics.PipelineMetric (per-node verdicts)")
        self._student = student.deepcopy()
        nodes = self._student.nodes()
        unknown = sorted(set(self.only_nodes or ()) - set(nodes))
        if unknown:
            raise ConfigError(f"--param nodes: unknown node(s) {unknown}; nodes are {sorted(nodes)}")
        self.node_names = [n for n in nodes if not self.only_nodes or n in self.only_nodes]
        self.trainset = list(trainset)
        self.valset = list(valset) if valset else list(trainset)
        self.rng = random.Random(self.seed)
        self.budget = Budget(self.max_lm_calls, self.max_tokens, self.max_cost)
        self.history, self.trajectory, self._counter, self._rollout = [], [], 0, 0
        judges = sum(type(v).__name__ == "LLMJudge" for vs in getattr(self.metric, "validators", {}).values()
                     for v in vs)
        self._per_example = float(len(nodes) + judges)  # calls one example costs; updated as measured
        size = self.val_size or len(self.valset)
        self.scoring_set = (self.valset if size >= len(self.valset)
                            else random.Random(self.seed).sample(self.valset, size))
        self._confirm_examples = [e for e in self.valset if not any(e is s for s in self.scoring_set)]
        # Held back for confirming a winner on the rest of the valset (the original's part is
        # usually a cache hit of the compile's baseline, so only the winner's half is reserved).
        self._reserve = int(len(self._confirm_examples) * self._per_example)
        self.stopped = ""
        original = Candidate("c0", self.instructions(self._student))
        self.best: Candidate = original
        with self.budget.track():
            try:
                self.score(original)
                self.search()
            except (BudgetExhaustedError, BudgetStop) as exc:
                self.stopped = f"budget: {exc}"
                logger.info("%s stopped: %s", self.method, exc)
            if original.score is None:  # not even the original could be scored: nothing to choose from
                self.best = original
            winner = self._confirm(original)
        self.chosen = {"method": self.method, "best": winner.as_dict(), "candidates": len(self.history),
                       "scoring_set": len(self.scoring_set), "stopped": self.stopped or "finished",
                       "budget": self.budget.as_dict(), "trajectory": self.trajectory, **self.report()}
        logger.info("%s: %s; best %s scored %s", self.method, self.budget.describe(), winner.id, winner.score)
        return self.build(winner.instructions, winner.attach)

    def search(self) -> None:
        """The method itself: propose candidates with :meth:`ask`, score them with :meth:`score`."""
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """Method-specific figures for ``chosen`` (recorded with the run)."""
        return {}

    def _confirm(self, original: Candidate) -> Candidate:
        """The winner, checked against the original on the whole valset when it was scored on a
        sample; the original when the winner does not hold up (or cannot be checked)."""
        best = self.best
        if best is original or best.score is None or original.score is None or not self._confirm_examples:
            return best
        self._reserve = 0
        try:  # (inside the compile's budget.track())
            rest_original = self.evaluate(original.instructions, self._confirm_examples, kind="confirm",
                                          candidate=original, partial=False)
            rest_best = self.evaluate(best.instructions, self._confirm_examples, kind="confirm", candidate=best,
                                      partial=False)
        except (BudgetExhaustedError, BudgetStop):
            logger.info("%s: no budget left to confirm %s on the whole valset; keeping the original",
                        self.method, best.id)
            self.stopped = (self.stopped + "; " if self.stopped else "") + "could not confirm on the whole valset"
            return original
        n, m = len(self.scoring_set), len(self._confirm_examples)
        full_best = (best.score * n + rest_best.score * m) / (n + m)
        full_original = (original.score * n + rest_original.score * m) / (n + m)
        logger.info("%s: whole valset: original %.3f, %s %.3f", self.method, full_original, best.id, full_best)
        if full_best <= full_original:
            return original
        return best

    # -- candidates ---------------------------------------------------------------------------

    def instructions(self, program: Pipeline) -> dict[str, str]:
        return {name: node.signature.instructions for name, node in program.nodes().items()}

    def build(self, instructions: Mapping[str, str], attach: Mapping[str, Any] | None = None) -> Pipeline:
        """A copy of the student with these instructions (demos and other state kept) and, for
        the nodes in ``attach``, that query prompt."""
        program = self._student.deepcopy()
        for name, node in program.nodes().items():
            if name in instructions and instructions[name] != node.signature.instructions:
                node.signature = node.signature.with_instructions(instructions[name])
            if attach and name in attach:
                node.query_prompt = attach[name]
        return program

    def candidate(self, parent: Candidate, node: str, instruction: str, *, origin: str, step: int) -> Candidate:
        """A child of ``parent`` with ``node``'s instruction replaced."""
        self._counter += 1
        return Candidate(f"c{self._counter}", {**parent.instructions, node: instruction}, parent=parent.id,
                         step=step, origin=origin, node=node)

    def score(self, candidate: Candidate) -> float:
        """Scores ``candidate`` on the scoring set, records it, and updates the best so far.

        Raises:
            BudgetExhaustedError: The whole scoring set does not fit the budget (scores on
                different subsets would not be comparable).
        """
        evaluation = self.evaluate(candidate.instructions, self.scoring_set, kind="candidate", candidate=candidate,
                                   partial=False)
        candidate.score = evaluation.score
        if not any(c is candidate for c in self.history):
            self.history.append(candidate)
        if candidate.score > (self.best.score if self.best.score is not None else -1.0):
            self.best = candidate
        self.trajectory.append((len(self.trajectory), self.best.score or 0.0))
        logger.info("%s %s (%s of %s, node %s): %.3f", self.method, candidate.id, candidate.origin,
                    candidate.parent, candidate.node, candidate.score)
        self.last_evaluation = evaluation
        return candidate.score

    def evaluate(self, program: Mapping[str, str] | dspy.Module, examples: Sequence[dspy.Example], *,
                 kind: str, candidate: Candidate | None = None, partial: bool = True) -> Evaluation:
        """Runs ``program`` (or instructions) on ``examples`` through ``dspy.Evaluate`` (a child run).

        With ``partial``, the examples are cut to what the budget affords; otherwise a shortfall
        raises BudgetExhaustedError before any call. An evaluation the gate stops half-way is
        discarded (BudgetStop propagates).
        """
        examples = list(examples)
        affordable = self._affordable(len(examples))
        if affordable < len(examples):
            if not partial or affordable == 0:
                raise BudgetExhaustedError(f"{self.budget.describe()}: {len(examples)} more examples at "
                                           f"~{self._per_example:.1f} calls each do not fit")
            examples = examples[:affordable]
        if not isinstance(program, dspy.Module):
            program = self.build(program, candidate.attach if candidate is not None else None)
        verdicts: dict[int, dict[str, Verdict]] = {}

        def metric(example: Any, prediction: Any, trace: Any = None) -> float:
            judged = self.metric.judge(example, prediction)
            verdicts[id(example)] = judged
            return self.metric.score(judged)

        metadata = {"metric_key": f"{self.method}.{kind}"}
        if candidate is not None:
            metadata.update({"pipec.candidate": candidate.id, "pipec.parent": candidate.parent or "",
                             "pipec.step": candidate.step, "pipec.origin": candidate.origin,
                             "pipec.node": candidate.node or ""})
        before = self.budget.calls
        evaluator = dspy.Evaluate(devset=examples, metric=metric, num_threads=self.num_threads,
                                  display_progress=False, max_errors=len(examples) + 1, provide_traceback=False)
        result = evaluator(program, callback_metadata=metadata)
        calls = self.budget.calls - before
        if calls:
            self._per_example = max(self._per_example, calls / len(examples))
        outcomes = []
        for example, prediction, value in result.results:
            judged = verdicts.get(id(example))
            if judged is None:  # the program raised on this example
                judged = {name: Verdict.fail("the pipeline raised before this node produced output")
                          for name in self._student.nodes()}
                prediction = None
            outcomes.append(Outcome(example, prediction, judged, float(getattr(value, "score", value) or 0.0)))
        score = sum(o.score for o in outcomes) / len(outcomes) if outcomes else 0.0
        return Evaluation(score, outcomes, calls)

    def _affordable(self, wanted: int) -> int:
        count = wanted
        while count > 0 and not self.budget.affords(int(count * self._per_example + 0.999) + self._reserve):
            count -= 1
        return count

    def affords(self, calls: int) -> bool:
        """Whether ``calls`` more calls fit, beside the calls held back for confirmation."""
        return self.budget.affords(calls + self._reserve)

    def minibatch(self, size: int, pool: Sequence[dspy.Example] | None = None) -> list[dspy.Example]:
        pool = list(self.trainset if pool is None else pool)
        return pool if size >= len(pool) else self.rng.sample(pool, size)

    # -- attribution and reports --------------------------------------------------------------

    def attribution(self, evaluation: Evaluation | None = None) -> list[str]:
        """Nodes in rewrite order: most failures first (ties: pipeline order), the rest after."""
        evaluation = evaluation or getattr(self, "last_evaluation", None)
        counts = evaluation.node_failures() if evaluation is not None else Counter()
        order = {name: i for i, name in enumerate(self.node_names)}
        return sorted(self.node_names, key=lambda n: (-counts.get(n, 0), order[n]))

    def target_node(self, evaluation: Evaluation | None = None) -> str:
        return self.attribution(evaluation)[0]

    def node_inputs(self, node: str, outcome: Outcome) -> dict[str, Any]:
        """What ``node`` was given: its recorded call's inputs when the prediction carries them,
        else upstream outputs from the prediction and the rest from the example."""
        fields = self._student.nodes()[node].input_fields
        call = _node_call(outcome.prediction, node)
        if call is not None and call.inputs:
            return {name: call.inputs[name] for name in fields if name in call.inputs}
        found = {}
        for name in fields:
            for source in (outcome.prediction, outcome.example):
                if source is not None and hasattr(source, "get") and source.get(name) is not None:
                    found[name] = source.get(name)
                    break
        return found

    def node_output(self, node: str, outcome: Outcome) -> Any:
        """What ``node`` produced on this example (its recorded call, else the prediction's field)."""
        call = _node_call(outcome.prediction, node)
        if call is not None:
            return call.output
        field_name = self._student.nodes()[node].output_field
        return outcome.prediction.get(field_name) if outcome.prediction is not None else None

    def gold(self, node: str, example: dspy.Example) -> Any:
        field_name = self._student.gold.get(node)
        return example.get(field_name) if field_name else None

    def describe_failures(self, node: str, outcomes: Sequence[Outcome], *, limit: int = 4,
                          comments: Mapping[int, str] | None = None) -> str:
        """Failing examples of ``node`` as text: inputs, output, expected output, feedback."""
        blocks = []
        for i, outcome in enumerate(outcomes[:limit], start=1):
            inputs = "\n".join(f"  {k}: {_short(v)}" for k, v in self.node_inputs(node, outcome).items())
            output = self.node_output(node, outcome)
            verdict = outcome.verdicts.get(node)
            lines = [f"Example {i}:", f"Input:\n{inputs}", f"Output: {_short(output)}"]
            gold = self.gold(node, outcome.example)
            if gold is not None:
                lines.append(f"Expected: {_short(gold)}")
            if verdict is not None:
                lines.append(f"Score: {verdict.score:.2f}")
                if verdict.feedback:
                    lines.append(f"Feedback: {verdict.feedback}")
            if comments and id(outcome) in comments:
                lines.append(f"Judge comment: {comments[id(outcome)]}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) or "(no failing examples)"

    def task_description(self, node: str) -> str:
        """What the step ``node`` does, for the prompt writer: its kind, fields and labels."""
        step = self._student.nodes()[node]
        text = (f"The step '{node}' ({step.kind}) of the {type(self._student).__name__} pipeline reads "
                f"{', '.join(step.input_fields)} and writes {step.output_field}.")
        labels = getattr(step, "labels", None)
        if labels:
            text += f" {step.output_field} is one of: {', '.join(labels)}."
        return text

    def paraphrase(self, parent: Candidate, node: str, *, step: int) -> Candidate | None:
        """A Monte Carlo successor: the same instruction in other words (one prompt-writer call)."""
        answer = self.ask(Paraphrase, task=self.task_description(node), instruction=parent.instructions[node])
        text = clean_instruction(answer.paraphrase if answer is not None else None)
        return self.candidate(parent, node, text, origin="paraphrase", step=step) if text else None

    def demos_text(self, node: str, examples: Sequence[dspy.Example]) -> str:
        """Input/output pairs of ``node`` from labelled examples (inputs the example holds, gold output)."""
        fields = self._student.nodes()[node].input_fields
        blocks = []
        for example in examples:
            gold = self.gold(node, example)
            if gold is None:
                continue
            inputs = "\n".join(f"  {f}: {_short(example.get(f))}" for f in fields if example.get(f) is not None)
            blocks.append(f"Input:\n{inputs}\nOutput: {_short(gold)}")
        return "\n\n".join(blocks) or "(no examples)"

    def feedback_judge(self, judge_lm: Any = None) -> LLMJudge:
        """A judge that scores an output against the gold one and comments on how to get closer.

        Its LM: ``judge_lm``, else the LM of the pipeline's own LLM judges, else the task LM.
        """
        lm, adapter = judge_lm, None
        if hasattr(lm, "adapter"):
            lm, adapter = lm.lm, lm.adapter
        if lm is None:
            for checks in getattr(self.metric, "validators", {}).values():
                for check in checks:
                    if isinstance(check, LLMJudge) and check.lm is not None:
                        lm, adapter = check.lm, check.adapter
        return LLMJudge(JUDGE_RUBRIC, lm=lm, adapter=adapter, mode="score", retries=1)

    # -- the prompt-writing LM ----------------------------------------------------------------

    def ask(self, signature: type[dspy.Signature], **inputs: Any) -> dspy.Prediction | None:
        """One call of the prompt-writing LM. None when its answer could not be parsed.

        Raises:
            BudgetExhaustedError: No call fits the budget.
        """
        if not self.affords(1):
            raise BudgetExhaustedError(f"{self.budget.describe()}: no call left for the prompt writer")
        lm, adapter = ((self.prompt_lm.lm, self.prompt_lm.adapter) if hasattr(self.prompt_lm, "adapter")
                       else (self.prompt_lm, None))
        settings: dict[str, Any] = {"lm": lm or dspy.settings.lm, "trace": []}
        if adapter is not None:
            settings["adapter"] = adapter
        self._rollout += 1
        config: dict[str, Any] = {"temperature": self.temperature, "rollout_id": self.seed * 100_000 + self._rollout}
        if "seed" in getattr(getattr(settings["lm"], "engine", None), "supported_params", ()):
            # An engine with a fixed sampling seed (the embedded LM) would repeat one sample: vary it per call.
            config["seed"] = config["rollout_id"]
        try:
            with dspy.context(**settings):
                return dspy.Predict(signature)(**inputs, config=config)
        except BudgetStop:
            raise
        except Exception as exc:  # an unparseable proposal is a lost proposal, not a failed compile
            logger.info("%s: the prompt writer's answer was unusable: %s", self.method, str(exc)[:200])
            return None


def _node_call(prediction: Any, node: str) -> Any:
    """The first recorded call of ``node`` in a pipeline's prediction (programs.trace), or None."""
    try:
        from programs.trace import node_calls
    except ImportError:  # pragma: no cover - older programs package
        return None
    calls = node_calls(prediction) if prediction is not None else None
    return next((c for c in calls or () if c.node == node), None)


def _short(value: Any, limit: int = 400) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"

