"""Surgery: architecture edits on a LayerGraph, listed in config as ``surgery.ops``.

The equivalent of Deeplearning4j's TransferLearning.Builder / GraphBuilder. Each op is a
mapping with ``op`` naming a registered op and its arguments; layer arguments may sit inline
or under ``args`` (as in ``source=spec``), and sizes that follow from the input shape
(``in_features``, ``in_channels``, ``num_features`` …) may be left out. Inline, ``name`` is
the node's name; a layer argument that is also called ``name`` (an activation's function) goes
under ``args``::

    surgery:
      ops:
        - op: remove_output_layer
        - {op: add_layer, name: output, type: dense, out_features: 3, activation: softmax}
        - {op: add_layer, name: act, type: activation, args: {name: relu}, after: fc1}

Built-in ops (DL4J names in brackets):

``remove_output_layer`` [removeOutputLayer]
    Remove the node(s) that produce the outputs; their inputs become the outputs.
``remove_layers_from_output`` ``n`` [removeLayersFromOutput]
    ``remove_output_layer`` n times.
``add_layer`` ``name, type, args…, after?`` [addLayer]
    At the output (the new layer becomes the output), or inserted right after node ``after``
    (its consumers and the outputs naming it take the new layer instead).
``replace_layer`` ``name, type, args…``
    A new layer in place of node ``name``, same name and connections.
``n_out_replace`` ``layer, n_out, weight_init?, weight_init_next?`` [nOutReplace]
    Re-initialize ``layer`` with a new output size and resize what takes its output: parameter-
    free layers are followed, batch/layer norms and depthwise convs are resized and followed,
    the next dense/conv/recurrent layer gets the new input size (from the traced shape, so a
    flatten in between is accounted for). A layer that cannot take the new size (an
    embedding, an element-wise merge with an unchanged input, …) is an error naming it.
``n_in_replace`` ``layer, n_in, weight_init?`` [nInReplace]
    Re-initialize ``layer`` with a new input size.
``set_input_preprocessor`` ``type, args…, input?, name?, input_shape?`` [setInputPreProcessor]
    Insert a flatten / reshape / permute / normalize node right after a graph input (named
    ``preprocess_<input>`` unless ``name`` is given). ``input_shape`` becomes the input's
    declared shape: the shape of the data as they now arrive, before the preprocessor (raw
    [28, 28] images in front of a flatten). normalize keeps the declared shape, permute derives
    it (inverse permutation); flatten and reshape need it when the old shape was declared.
``add_vertex`` ``name, type, args…, inputs`` [GraphBuilder.addLayer / addVertex]
    A node taking the named nodes or graph inputs, appended last; it becomes an output only by
    a later ``set_outputs`` (or another op consuming it) — a new node that leads to no output
    at the end of the list is an error.
``remove_vertex_keep_connections`` ``name`` [removeVertexKeepConnections]
    Remove a node; its consumers and the outputs naming it take its input instead (it must
    have exactly one input unless nothing takes its output).
``remove_vertex_and_connections`` ``name`` [removeVertexAndConnections]
    Remove a node and every node that depended only on it; a merge that loses one of several
    inputs keeps the others. Removing a graph output needs a later ``set_outputs``.
``set_outputs`` ``outputs, prune?`` [setOutputs]
    Replace the outputs list; ``prune`` (default true) drops the nodes no output depends on.

Every op checks its arguments before it changes anything; after each op the edited graph runs
on example inputs of the declared input shapes, so an impossible edit is a ShapeError naming
the op, the layer and the shapes. The input graph is never changed: the result shares the
modules no op touched. The nodes of new and re-initialized modules are marked ``reinit`` (fine-tune
applies its weight/bias init to them), with ``weight_init`` when an op named a scheme (one
weight-init table: tlexp.graph._weight_init).
Frozen nodes stay frozen if they keep their module; re-initialized ones start trainable.
"""

from tlexp.graph._weight_init import WEIGHT_INITS, init_weights
from tlexp.surgery import _layer_ops, _resize, _vertex_ops  # noqa: F401  (register the built-in ops)
from tlexp.surgery._registry import OpContext, OpSpec, apply_ops, get_op, list_ops, register_op

__all__ = [
    "OpContext",
    "OpSpec",
    "WEIGHT_INITS",
    "apply_ops",
    "init_weights",
    "get_op",
    "list_ops",
    "register_op",
]
