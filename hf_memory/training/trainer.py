"""`MemoryTrainer`: the HF Trainer, running each batch of documents segment by segment with a carried memory.

Batches come from `SegmentCollator` (`[batch, segments, seq_len]` + `segment_mask`). Segments are read in the model's
`config.reading_order` (first to last, last to first, or both: each pass trained on its own, their span logits summed
at inference). Training backpropagates through the memory across segments (full BPTT, or windows of `bptt_depth`
segments). Evaluation and prediction carry the memory too, and return per-segment logits `(documents, segments,
seq_len)` in document order for the postprocessing (the `QuestionAnsweringTrainer` pattern of the official examples).
"""

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from transformers import Trainer
from transformers.trainer_utils import PredictionOutput, speed_metrics

from ..data.collator import SegmentCountGroupedSampler
from ..model_cards import TrainerModelCardMixin
from ..models.memxlnet.qa_processing_memxlnet import reading_passes, reading_steps
from .callbacks import SamplerEpochCallback

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def per_segment_loss(start_logits, end_logits, start_positions, end_positions, segment_mask, segments_per_document):
    """Cross-entropy of each active segment weighted 1/(segments of its document), averaged over the batch.

    Every document weighs the same whatever its length, and the losses of consecutive BPTT windows (slices along
    the segment axis with the same `segments_per_document`) add up to the loss of the whole document.
    Logits `(batch, segments, seq_len)`; labels and mask `(batch, segments)`; `segments_per_document` `(batch,)`.
    """
    flat = lambda tensor: tensor.reshape(-1, tensor.shape[-1]).float()  # noqa: E731
    losses = F.cross_entropy(flat(start_logits), start_positions.reshape(-1), reduction="none")
    losses = (losses + F.cross_entropy(flat(end_logits), end_positions.reshape(-1), reduction="none")) / 2
    weights = segment_mask.float() / segments_per_document.clamp(min=1).unsqueeze(-1)
    return (losses.view_as(weights) * weights).sum() / segment_mask.shape[0]


def global_softmax_loss(start_logits, end_logits, global_start, global_end, segment_mask):
    """One softmax over all positions of all active segments of a document (targets from `global_span_labels`)."""
    hidden = ~segment_mask.unsqueeze(-1)
    flat = lambda tensor: tensor.float().masked_fill(hidden, float("-inf")).flatten(1)  # noqa: E731
    return (F.cross_entropy(flat(start_logits), global_start) + F.cross_entropy(flat(end_logits), global_end)) / 2


def average_gradients(model: DistributedDataParallel) -> None:
    """Average the accumulated gradients over the processes, as DDP's reducer would. The reducer cannot do it here:
    it expects one forward per backward and marks as unused every parameter that the LAST forward's output does not
    reach (the segments before a detached memory, the other pass's memory), then fails when their gradients arrive.
    A parameter with a gradient on no process keeps none, as under DDP."""
    group = model.process_group
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    has_gradient = torch.tensor(
        [parameter.grad is not None for parameter in parameters], dtype=torch.int32, device=parameters[0].device
    )
    torch.distributed.all_reduce(has_gradient, op=torch.distributed.ReduceOp.MAX, group=group)
    by_dtype = {}
    for parameter, present in zip(parameters, has_gradient.tolist()):
        if present:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            by_dtype.setdefault(parameter.grad.dtype, []).append(parameter.grad)
    world_size = torch.distributed.get_world_size(group)
    for gradients in by_dtype.values():
        flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
        torch.distributed.all_reduce(flat, group=group)
        flat /= world_size
        for gradient, reduced in zip(gradients, flat.split([gradient.numel() for gradient in gradients])):
            gradient.copy_(reduced.view_as(gradient))


class MemoryTrainer(TrainerModelCardMixin, Trainer):
    """Trainer for memory QA models over whole documents.

    Args (besides the Trainer's):
        bptt_depth: segments per truncated-BPTT window (0 = the whole document).
        use_global_softmax: document-level softmax loss; `global_softmax_active` (switched by
            `GlobalSoftmaxWarmupCallback`) says whether it is on in the current epoch.
        eval_examples: the raw examples of `eval_dataset` (ids, contexts, answers) for `post_process_function`.
        post_process_function: `(examples, features, (start_logits, end_logits), prefix) -> EvalPrediction`.
    """

    def __init__(
        self,
        *args,
        bptt_depth: int = 0,
        use_global_softmax: bool = False,
        eval_examples=None,
        post_process_function=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if bptt_depth < 0:
            raise ValueError(f"bptt_depth must be >= 0 (0 = full BPTT), got {bptt_depth}.")
        self.bptt_depth = bptt_depth
        self.use_global_softmax = use_global_softmax
        self.global_softmax_active = use_global_softmax
        self.eval_examples = eval_examples
        self.post_process_function = post_process_function
        self.segment_sampler = None
        self.add_callback(SamplerEpochCallback(self))

    def _remove_unused_columns(self, dataset, description=None):
        """Keep every column: `SegmentCollator` picks the model inputs and drops strings/offsets itself."""
        return dataset

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        self.segment_sampler = SegmentCountGroupedSampler(
            dataset["num_segments"],
            self._train_batch_size,
            seed=self.args.seed,
            max_segments=getattr(self.data_collator, "max_segments", None),
        )
        return self.segment_sampler

    def _run_segments(self, model, inputs, steps, memory, use_backward_memory=False):
        """Forward segments `steps` of every document in that order, carrying memory. Returns start/end logits (in
        document order, whatever the reading order), the memory and the model's auxiliary loss (`outputs.aux_loss`,
        e.g. GMM routing losses) summed over `steps` divided by the number of segments, so that windows add up like
        the span loss (0 for models without one)."""
        starts, ends, aux_loss = [], [], 0.0
        for step in steps:
            outputs = model(
                **{key: inputs[key][:, step] for key in MODEL_INPUT_KEYS if key in inputs},
                memory_state=memory,
                segment_mask=inputs["segment_mask"][:, step],
                use_backward_memory=use_backward_memory,
            )
            starts.append(outputs.start_logits)
            ends.append(outputs.end_logits)
            memory = outputs.memory_state
            if getattr(outputs, "aux_loss", None) is not None:
                aux_loss = aux_loss + outputs.aux_loss / inputs["input_ids"].shape[1]
        in_document_order = sorted(range(len(steps)), key=steps.__getitem__)
        start_logits = torch.stack([starts[i] for i in in_document_order], 1)
        end_logits = torch.stack([ends[i] for i in in_document_order], 1)
        return start_logits, end_logits, memory, aux_loss

    def _loss(self, start_logits, end_logits, inputs, steps):
        """Loss of the segments `steps` (all of them for the global softmax), logits in document order."""
        steps = sorted(steps)
        mask = inputs["segment_mask"][:, steps]
        if self.global_softmax_active:
            return global_softmax_loss(
                start_logits, end_logits, inputs["global_start_positions"], inputs["global_end_positions"], mask
            )
        return per_segment_loss(
            start_logits,
            end_logits,
            inputs["start_positions"][:, steps],
            inputs["end_positions"][:, steps],
            mask,
            inputs["segment_mask"].sum(-1),
        )

    def _passes(self) -> tuple[tuple[str, bool], ...]:
        """`(direction, use_backward_memory)` of the model's passes over a document (`config.reading_order`)."""
        return reading_passes(getattr(self.model.config, "reading_order", "forward"))

    def _windows(self, num_steps: int, direction: str) -> list[list[int]]:
        """Truncated-BPTT windows of `bptt_depth` segments, in the order a pass in `direction` reads them."""
        steps, depth = reading_steps(num_steps, direction), self.bptt_depth or num_steps
        return [steps[first:first + depth] for first in range(0, num_steps, depth)]

    def _read_windows(self, model, inputs, windows, memory, use_backward_memory):
        """`_run_segments` over consecutive BPTT windows of one pass, the memory detached between them; logits of
        all their segments in document order."""
        pieces, aux_loss = {}, 0.0
        for index, steps in enumerate(windows):
            if index:
                memory = None if memory is None else memory.detach()
            *pieces[min(steps)], memory, window_aux_loss = self._run_segments(
                model, inputs, steps, memory, use_backward_memory
            )
            aux_loss = aux_loss + window_aux_loss
        start = torch.cat([pieces[first][0] for first in sorted(pieces)], 1)
        end = torch.cat([pieces[first][1] for first in sorted(pieces)], 1)
        return start, end, memory, aux_loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Each pass of the model's reading order (two for a bidirectional model) is trained as a reader of its own,
        on its own logits: a document softmax needs all of a pass's segments for one backward; otherwise each BPTT
        window has its own. Inference adds the passes' logits. Under DDP the backwards run unsynchronised and the
        gradients are averaged once at the end of a synchronising step (`average_gradients`)."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        num_steps = inputs["input_ids"].shape[1]
        scale = self.current_gradient_accumulation_steps
        synchronise = isinstance(model, DistributedDataParallel) and model.require_backward_grad_sync
        total = torch.zeros((), device=self.args.device)
        with model.no_sync() if synchronise else contextlib.nullcontext():
            for direction, use_backward_memory in self._passes():
                windows = self._windows(num_steps, direction)
                chunks = [windows] if self.global_softmax_active else [[window] for window in windows]
                memory = None
                for chunk in chunks:
                    with self.compute_loss_context_manager():
                        start, end, memory, aux_loss = self._read_windows(
                            model, inputs, chunk, memory, use_backward_memory
                        )
                        steps = [step for window in chunk for step in window]
                        loss = (self._loss(start, end, inputs, steps) + aux_loss) / scale
                    self.accelerator.backward(loss)
                    memory = None if memory is None else memory.detach()
                    total = total + loss.detach()
        if synchronise:
            average_gradients(model)
        return total

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Span logits summed over the model's passes; the loss is the training objective (summed per pass)."""
        inputs = self._prepare_inputs(inputs)
        num_steps = inputs["input_ids"].shape[1]
        everything = list(range(num_steps))
        start, end, loss = 0.0, 0.0, None
        with torch.no_grad(), self.compute_loss_context_manager():
            for direction, use_backward_memory in self._passes():
                pass_start, pass_end, _, _ = self._read_windows(
                    model, inputs, self._windows(num_steps, direction), None, use_backward_memory
                )
                start, end = start + pass_start, end + pass_end
                if "start_positions" in inputs:
                    pass_loss = self._loss(pass_start, pass_end, inputs, everything).detach()
                    loss = pass_loss if loss is None else loss + pass_loss
        if prediction_loss_only:
            return loss, None, None
        return loss, (start.float(), end.float()), None

    @contextlib.contextmanager
    def _all_segments(self):
        """Evaluation sees whole documents even while the training curriculum caps the segment count."""
        collator_cap = getattr(self.data_collator, "max_segments", None)
        if collator_cap is not None:
            self.data_collator.max_segments = None
        try:
            yield
        finally:
            if collator_cap is not None:
                self.data_collator.max_segments = collator_cap

    def _predict_documents(self, dataloader, description, examples, features, ignore_keys, metric_key_prefix, stage):
        compute_metrics, self.compute_metrics = self.compute_metrics, None
        start_time = time.time()
        try:
            output = self.evaluation_loop(
                dataloader,
                description=description,
                prediction_loss_only=True if self.post_process_function is None else None,
                ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )
        finally:
            self.compute_metrics = compute_metrics
        metrics = dict(output.metrics)
        total_batch_size = self.args.eval_batch_size * self.args.world_size
        metrics.update(
            speed_metrics(
                metric_key_prefix,
                start_time,
                num_samples=output.num_samples,
                num_steps=math.ceil(output.num_samples / total_batch_size),
            )
        )
        predictions = None
        if self.post_process_function is not None and self.args.should_save and output.predictions is not None:
            predictions = self.post_process_function(examples, features, output.predictions, stage)
            if self.compute_metrics is not None and predictions.label_ids is not None:
                scores = self.compute_metrics(predictions)
                metrics.update({f"{metric_key_prefix}_{key}": value for key, value in scores.items()})
        return output, predictions, metrics

    def evaluate(self, eval_dataset=None, eval_examples=None, ignore_keys=None, metric_key_prefix="eval"):
        eval_dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        eval_examples = self.eval_examples if eval_examples is None else eval_examples
        with self._all_segments():
            dataloader = self.get_eval_dataloader(eval_dataset)
            _, _, metrics = self._predict_documents(
                dataloader, "Evaluation", eval_examples, eval_dataset, ignore_keys, metric_key_prefix, "eval"
            )
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    def predict(self, test_dataset, test_examples=None, ignore_keys=None, metric_key_prefix="test"):
        with self._all_segments():
            dataloader = self.get_test_dataloader(test_dataset)
            output, predictions, metrics = self._predict_documents(
                dataloader, "Prediction", test_examples, test_dataset, ignore_keys, metric_key_prefix, "predict"
            )
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return PredictionOutput(
            predictions=output.predictions if predictions is None else predictions.predictions,
            label_ids=None if predictions is None else predictions.label_ids,
            metrics=metrics,
        )
