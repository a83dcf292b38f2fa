"""TFLite size and one-thread LiteRT latency of Keras models, timed side by side."""

import statistics
import time


def tflite_bytes(model):
    """The float TFLite flatbuffer of a Keras model."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def tflite_latency(blobs, sample, rounds, invokes):
    """Median ms per invoke of each flatbuffer (one thread), timed in interleaved rounds,
    and the median per-round ratio of the first to each."""
    from ai_edge_litert.interpreter import Interpreter

    interpreters = []
    for blob in blobs:
        interpreter = Interpreter(model_content=blob, num_threads=1)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample)
        for _ in range(5):
            interpreter.invoke()
        interpreters.append(interpreter)
    times = [[] for _ in blobs]
    for r in range(rounds):
        order = range(len(blobs)) if r % 2 == 0 else reversed(range(len(blobs)))
        for i in order:
            start = time.perf_counter()
            for _ in range(invokes):
                interpreters[i].invoke()
            times[i].append((time.perf_counter() - start) / invokes * 1e3)
    medians = [statistics.median(t) for t in times]
    speedups = [statistics.median(a / b for a, b in zip(times[0], t)) for t in times]
    return medians, speedups
