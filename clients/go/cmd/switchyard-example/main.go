// Command switchyard-example calls a Switchyard router (or model server) with
// the generated Go stubs: it lists the models, generates a completion, then
// streams the same prompt.
//
//	switchyard-example -target localhost:50051 -model smollm2-135m-instruct -prompt "The capital of France is"
//
// Each result is one line; texts are JSON strings. An error prints its gRPC
// status code and message (and, for NOT_FOUND, the models that exist) to
// stderr and exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	switchyardv1 "switchyard.dev/switchyard/clients/go/switchyard/v1"
)

func main() {
	target := flag.String("target", "localhost:50051", "host:port of the router or a model server")
	model := flag.String("model", "smollm2-135m-instruct", "model id or alias")
	prompt := flag.String("prompt", "The capital of France is", "prompt to complete")
	maxTokens := flag.Int("max-tokens", 16, "most tokens to generate")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline for all three calls")
	flag.Parse()

	if err := run(*target, *model, *prompt, int32(*maxTokens), *timeout); err != nil {
		printError(err)
		os.Exit(1)
	}
}

func run(target, model, prompt string, maxTokens int32, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Plaintext, as the servers listen by default; add TLS credentials for a remote router.
	conn, err := grpc.DialContext(ctx, target, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	client := switchyardv1.NewLLMServiceClient(conn)

	models, err := client.ListModels(ctx, &switchyardv1.ListModelsRequest{})
	if err != nil {
		return err
	}
	for _, m := range models.GetModels() {
		fmt.Printf("model %s %s backend=%s context_length=%d\n",
			m.GetId(), m.GetStatus(), m.GetBackend(), m.GetContextLength())
	}

	temperature := float32(0) // greedy: the stream repeats the unary answer
	sampling := &switchyardv1.SamplingParams{MaxTokens: &maxTokens, Temperature: &temperature}

	reply, err := client.Generate(ctx, &switchyardv1.GenerateRequest{
		Model: model, Prompt: prompt, Sampling: sampling,
	})
	if err != nil {
		return err
	}
	fmt.Printf("generate %s finish=%s prompt_tokens=%d completion_tokens=%d\n",
		quote(reply.GetText()), reply.GetFinishReason(),
		reply.GetUsage().GetPromptTokens(), reply.GetUsage().GetCompletionTokens())

	stream, err := client.StreamGenerate(ctx, &switchyardv1.StreamGenerateRequest{
		Model: model, Prompt: prompt, Sampling: sampling,
	})
	if err != nil {
		return err
	}
	var text strings.Builder
	var last *switchyardv1.StreamGenerateResponse
	messages := 0
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		messages++
		text.WriteString(chunk.GetText())
		last = chunk
	}
	fmt.Printf("stream %s messages=%d finish=%s completion_tokens=%d\n",
		quote(text.String()), messages, last.GetFinishReason(), last.GetUsage().GetCompletionTokens())
	return nil
}

func quote(text string) string {
	encoded, _ := json.Marshal(text) // a string always encodes
	return string(encoded)
}

// printError shows the status code and message, and the details a caller can act on.
func printError(err error) {
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return
	}
	fmt.Fprintf(os.Stderr, "error: %s: %s\n", st.Code(), st.Message())
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			fmt.Fprintf(os.Stderr, "reason: %s\n", info.GetReason())
			if available, ok := info.GetMetadata()["available"]; ok {
				fmt.Fprintf(os.Stderr, "available: %s\n", available)
			}
		}
	}
}
